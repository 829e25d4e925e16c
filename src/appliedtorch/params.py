"""`python -m appliedtorch.params params.yaml`: check a params file without running anything.

The params models live in `appliedtorch.core.params`; this module is only the command (it sits
outside `core` so that the params module needs nothing of the stage wrapper in `core.cli`).
"""

from __future__ import annotations

import sys

from appliedtorch.core.cli import run_stage
from appliedtorch.core.params import REQUIRED_SECTIONS, load_params
from appliedtorch.core.utils import flatten


def main(argv: list[str] | None = None) -> None:
    """Validate a params file (default params.yaml) and print its sections, or one error line."""
    path = (argv if argv is not None else sys.argv[1:]) or ["params.yaml"]

    def check() -> None:
        params = load_params(path[0])
        print(f"{path[0]}: ok ({', '.join(REQUIRED_SECTIONS)})")
        for key, value in flatten(params.model_dump()).items():
            print(f"  {key} = {value}")

    run_stage(check)


if __name__ == "__main__":
    main()
