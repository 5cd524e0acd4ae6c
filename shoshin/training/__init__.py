"""Training: the loop, the optimizer and schedule, checkpoints."""
