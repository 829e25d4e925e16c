"""appliedtorch: the PyTorch-for-applied-mathematicians tutorial as a reproducible pipeline."""

import os

# Idle OpenMP threads sleep instead of spinning. Set here, before torch loads its OpenMP runtime
# (stages import appliedtorch first); an OMP_WAIT_POLICY in the environment wins. Measured on the
# 2-core CPU, CNN at 2 threads: quiet 144-162 ms/batch (spinning 139-155, 1 thread 250-296); with
# one other busy process 280 ms (spinning 423-780, 1 thread 281), so 2 threads never lose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
