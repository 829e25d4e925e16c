"""appliedtorch: the PyTorch-for-applied-mathematicians tutorial as a reproducible pipeline.

Importing it changes nothing in the process: entry points make such decisions explicitly
(`appliedtorch.core.openmp.settle()`, the first statement of every stage and CLI).
"""

__version__ = "0.1.0"
