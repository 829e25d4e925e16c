"""What a classifier run writes: the verified model file, metrics.json, run.json, the details
files and figures, and what MLflow gets."""
