"""Backends schedule trials: plain Optuna in this process, or Ray Tune on a cluster; both record into one study."""
