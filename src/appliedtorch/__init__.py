"""appliedtorch: the PyTorch-for-applied-mathematicians tutorial as a reproducible pipeline."""

__version__ = "0.1.0"
