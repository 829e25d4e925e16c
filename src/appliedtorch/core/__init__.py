"""What every stage uses: params, errors, the stage wrapper, tracking (the only MLflow import),
plotting setup and small utilities. Imports nothing from the other subpackages."""
