"""A training run that holds up: N seeded members and their ensemble, resume after a kill, and
torchrun's processes with the one MLflow run rank 0 keeps."""
