"""Workloads: a trained model with its data splits; built-ins by name, or the user's `module:function`."""
from search.workloads.base import Workload, WorkloadError, build_workload, builtin_workloads, run_workload

__all__ = ["Workload", "WorkloadError", "build_workload", "builtin_workloads", "run_workload"]
