"""appliedtorch: the PyTorch-for-applied-mathematicians tutorial as a reproducible pipeline."""

import os

# Idle OpenMP threads sleep instead of spinning, so training on every core does not slow down
# when another process is busy (docs/performance.md has the figures). Set here, before torch
# loads its OpenMP runtime (stages import appliedtorch first); OMP_WAIT_POLICY in the environment
# wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
