"""The MNIST MLP and the CIFAR-10 CNN: models, in-memory batches, the training loop, torchrun,
resume state, outputs, the stage body and `appliedtorch-predict`."""
