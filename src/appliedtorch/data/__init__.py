"""Datasets by name (MNIST, Fashion-MNIST, CIFAR-10): the table, sources and verified download,
synthetic stand-ins, strict parsing and loading into uint8 tensors. Import the concrete modules:

    python stages/download.py --params params.yaml --dataset mnist --out data/raw/mnist
    >>> from appliedtorch.data.loading import load_dataset
    >>> data = load_dataset("mnist", "data/raw/mnist")     # uint8 tensors, classes, source
"""
