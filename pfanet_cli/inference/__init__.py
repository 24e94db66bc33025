"""Using a trained model: feature models (checkpoint or ONNX export), ``pfanet export`` and ``pfanet search``."""
