"""`python -m appliedtorch.sweep`: see appliedtorch/sweep/cli.py."""

from appliedtorch.sweep.cli import main

if __name__ == "__main__":
    main()
