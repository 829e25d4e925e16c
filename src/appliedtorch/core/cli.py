"""Entry-point wrapper for stages: expected errors become one line on stderr and an exit code.

SIGINT and SIGTERM (what `timeout`, `docker stop` and CI cancellation send) end a stage the same
way: an exception unwinds every `with` block (the MLflow run ends KILLED, staging directories and
temporary files are removed), then one `error:` line and exit code 128 + the signal number.
An exception nobody expected (a bug) is one `error: internal error in <stage>: ...` line too,
naming a log file that holds its traceback:

    python stages/train.py --params params.yaml --section mlp ...   # any stage's main() runs in run_stage
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.redact import error_line, redact


class Terminated(KeyboardInterrupt):
    """The stage was asked to stop by a signal. A KeyboardInterrupt, so that `except Exception`
    does not swallow it and an MLflow run it unwinds ends KILLED, as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def setup_logging() -> None:
    """One compact format for every stage; APPLIEDTORCH_LOG_LEVEL=DEBUG for more."""
    level = os.environ.get("APPLIEDTORCH_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise AppliedTorchError(
            f"APPLIEDTORCH_LOG_LEVEL {level[:40]!r} is not a log level; set it to DEBUG, INFO, "
            "WARNING, ERROR or CRITICAL, or unset it"
        )
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redact_record)  # no log line shows a password from a tracking URI
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Logs a traceback for every database error it then raises: the stage reports it in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _redact_record(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if "@" in message:
        record.msg, record.args = redact(message), None
    return True


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Inside the block SIGTERM raises Terminated and SIGINT KeyboardInterrupt, even where the
    parent left SIGINT ignored (a shell's background job). Only in the main thread (Python
    delivers signals there); the old handlers come back after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def _freeze_after_full_collection(phase: str, info: dict) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


@contextlib.contextmanager
def survivors_frozen() -> Iterator[None]:
    """Inside the block, what survives a full garbage collection is frozen (`gc.freeze`), and at
    exit everything is: each object is walked by a full collection at most once.

    A stage loads hundreds of thousands of objects with torch, MLflow and pandas; Python walks
    all of them in each full collection, about ten while they load and two more as the
    interpreter exits: seconds of every stage (docs/performance.md). The young generations are
    collected as always; only cycles among objects that were alive at a full collection wait for
    the process to end. Afterwards the collector is as it was."""
    gc.callbacks.append(_freeze_after_full_collection)
    try:
        yield
    finally:
        gc.callbacks.remove(_freeze_after_full_collection)
        gc.unfreeze()
        atexit.unregister(gc.freeze)  # once, however often a process runs a stage
        atexit.register(gc.freeze)  # the collections of the interpreter's exit walk nothing


def run_stage(main: Callable[[], object], name: str | None = None) -> None:
    """Call `main()`; report AppliedTorchError as `error: ...` (no traceback) and exit nonzero;
    SIGINT and SIGTERM end it with one line and exit code 130 or 143. Any other exception is a
    bug: one `error: internal error in <name>: ...` line naming a log file that holds the full
    traceback, exit code 1. `name` defaults to the running script's name."""
    try:
        with signals_raise(), survivors_frozen():
            setup_logging()  # inside: a bad APPLIEDTORCH_LOG_LEVEL is one line too
            main()
    except AppliedTorchError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (SIGINT)"
        print(f"error: {what}", file=sys.stderr)
        sys.exit(128 + int(signum))
    except BrokenPipeError:  # stdout piped into `head` and closed: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for such a pipe
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, reported in one line
        stage = name or command_name()
        print(f"error: internal error in {stage}: {internal_error(stage, exc)}", file=sys.stderr)
        sys.exit(1)


def command_name() -> str:
    """The running command's name: `train_mlp` for `stages/train.py --section mlp` (a stage run
    for one section is named `<script>_<section>`), `pinn` for stages/pinn.py,
    `appliedtorch-predict`, `appliedtorch.params` for `python -m appliedtorch.params`."""
    argv = sys.argv if sys.argv and sys.argv[0] else ["appliedtorch"]
    script = Path(argv[0])
    if script.suffix == ".py" and script.parent.name != "stages" and "appliedtorch" in script.parts:
        parts = script.with_suffix("").parts
        return ".".join(parts[len(parts) - parts[::-1].index("appliedtorch") - 1 :])
    section = next((a.split("=", 1)[1] for a in argv if a.startswith("--section=")), None)
    if "--section" in argv[:-1]:
        section = argv[argv.index("--section") + 1]
    stem = script.stem or "appliedtorch"
    return f"{stem}_{section}" if section and section.isidentifier() else stem


def internal_error(stage: str, exc: BaseException) -> str:
    """`<Type>: <first line>; traceback in <log>`: the full traceback goes to a new log file
    (mode 0600, in the system's temporary directory), passwords redacted like every line."""
    import tempfile
    import traceback

    line = f"{type(exc).__name__}: {error_line(exc)}"
    text = redact("".join(traceback.format_exception(exc)))
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stage)[:60]
    try:
        fd, log = tempfile.mkstemp(prefix=f"appliedtorch-{safe}-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        return f"{line} (the traceback could not be written: {err.strerror or err})"
    return f"{line}; traceback in {log} (please include it when reporting this bug)"
