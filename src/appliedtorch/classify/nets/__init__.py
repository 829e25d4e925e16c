"""The classifiers' nets (the tutorial's MLP and CNN, a small ResNet, the pixel classifier that
wraps them for files and MLflow) and the memory a training run of one needs."""
