"""Reports: one table per study, and the metrics file DVC shows."""
