"""What every rank of a run shares: the process group, stop requests, GPU locks, its launcher."""
