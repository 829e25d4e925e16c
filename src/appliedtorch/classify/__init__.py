"""The classifiers (the tutorial's MLP and CNN, and a ResNet), one folder per concept:

- `nets/`: the models and their memory budget;
- `training/`: the training engine (loop, batches, steps, optimizer, `auto` tuning, progress);
  `training/fast.py` holds the code that calls torch's private APIs, behind
  `APPLIEDTORCH_FAST_STEPS`;
- `runs/`: what makes a run robust: seeds as an ensemble, resume after a kill, torchrun;
- `artifacts/`: what a run writes: the model file, metrics and figures;
- `inference/`: `appliedtorch-predict` and the model file's metadata.

`params.py` is the `mlp` and `cnn` sections' schema; the stage is stages/train.py.
"""
