"""What training and inference both stand on: the device, mixed precision, torchrun collectives and checkpoint
files."""
