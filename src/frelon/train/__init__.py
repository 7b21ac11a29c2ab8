"""Training: distributed set-up, the launcher, schedules and the training loop."""
