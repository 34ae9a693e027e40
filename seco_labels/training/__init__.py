"""A training run: the SeCo trainer, the run folder and loop both trainers share, stop signals, torch.compile, log
sinks, the learning-rate schedule and validation."""
