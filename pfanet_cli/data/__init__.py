"""Datasets: the raw layouts (one module per dataset), the prepared format, preparation, the training
sampler and augmentation, and the synthetic renderer."""
