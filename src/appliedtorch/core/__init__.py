"""Shared mechanics every stage uses and no domain: the params machinery (`Section`, one-line
errors), the stage wrapper (`cli.run_stage`), errors, redaction, atomic output sets and small
utilities. Every stage imports all of it (its dvc.yaml dep is the folder); plot setup, which only
the stages that draw need, is `appliedtorch.plots`. Imports nothing from the other subpackages;
MLflow is in `tracking`, the machine's facts in `machine` (docs/architecture.md draws the layers)."""
