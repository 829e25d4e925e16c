"""Shared mechanics every stage uses and no domain: the params machinery (`Section`, one-line
errors), the stage wrapper (`cli.run_stage`), errors, redaction, atomic output sets, plot setup
and small utilities. Imports nothing from the other subpackages; MLflow is in `tracking`, the
machine's facts in `machine` (docs/architecture.md draws the layers)."""
