"""The search room: CLI, run configuration, workloads, the trial (prune -> recover -> measure), backends."""
