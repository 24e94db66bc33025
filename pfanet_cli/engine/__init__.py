"""Training: device and precision runtime, batches, the stage loop, checkpoints, run directories and
the stages (PFANet's train-gan and train-joint, AGW's train-agw)."""
