"""How runs start: the launcher, warm starts, the worker every rank runs, SLURM steps."""
