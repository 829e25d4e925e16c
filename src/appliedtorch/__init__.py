"""appliedtorch: the PyTorch-for-applied-mathematicians tutorial as a reproducible pipeline."""

# How torch's idle OpenMP threads wait (spin on a quiet machine, sleep beside busy processes;
# appliedtorch.machine.openmp) is decided here, before torch loads OpenMP: stages import
# appliedtorch first. OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment wins.
from appliedtorch.machine import openmp as _openmp  # noqa: F401

__version__ = "0.1.0"
