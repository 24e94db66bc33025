"""Training: device and precision runtime, batches, the stage loop, checkpoints, run directories and
the two stages (train-gan, train-joint)."""
