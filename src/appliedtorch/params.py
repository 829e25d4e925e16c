"""`python -m appliedtorch.params params.yaml`: check a params file without running anything.

The params models live in `appliedtorch.core.params`; this module is only the command.
"""

from appliedtorch.core.params import main

if __name__ == "__main__":
    main()
