"""Entry-point wrapper for stages: expected errors become one line on stderr and an exit code."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from appliedtorch.core.errors import AppliedTorchError


def setup_logging() -> None:
    """One compact format for every stage; APPLIEDTORCH_LOG_LEVEL=DEBUG for more."""
    level = os.environ.get("APPLIEDTORCH_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(main: Callable[[], object]) -> None:
    """Call `main()`; report AppliedTorchError as `error: ...` (no traceback) and exit nonzero."""
    setup_logging()
    try:
        main()
    except AppliedTorchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
