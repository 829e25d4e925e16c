"""A stage's outputs are one set: a failure at any point, a full disk included, leaves the
previous set byte for byte and no temporary file (core.utils.output_set).

The full-disk cases mount a small tmpfs where the outputs go (root only; skipped otherwise) and
run the stage script in this process, `run_stage` and all, as `python stages/<stage>.py` would.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import output_set, save_torch, write_json, write_text
from helpers import REPO, merge
from helpers.stage_runs import leftovers, one_error_line, run_stage_here, run_statuses, tmpfs

ENOSPC_LINE = "No space left on device"


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---- the helper ----------------------------------------------------------------------------------


def write_set(models: Path, reports: Path, tag: str) -> None:
    with output_set(models, reports) as out:
        save_torch({"tag": tag}, out.path(models / "m.pt"))
        write_json(out.path(reports / "metrics.json"), {"tag": tag})
        write_text(out.path(reports / "sub" / "notes.txt"), tag)
        write_text(out.path(reports / "new.txt"), tag)


@pytest.fixture
def previous(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    models, reports = tmp_path / "models", tmp_path / "reports"
    write_set(models, reports, "old")
    (reports / "new.txt").unlink()  # a file the next set adds
    return models, reports, tree(tmp_path)


def test_a_set_appears_whole(previous, tmp_path):
    models, reports, before = previous
    write_set(models, reports, "new")
    after = tree(tmp_path)
    assert after.keys() == before.keys() | {"reports/new.txt"}
    assert all(after[k] != v for k, v in before.items())  # every file replaced
    assert not leftovers(tmp_path)


N_FILES = 4  # files in write_set


@pytest.mark.parametrize("fail_at", range(N_FILES))
def test_a_rename_failing_at_any_file_puts_the_previous_set_back(
    fail_at, previous, tmp_path, monkeypatch
):
    """The moves into place are the one step that touches the previous set: whichever rename
    fails (here: the disk fills), the ones before it are undone."""
    models, reports, before = previous
    real_replace, calls = os.replace, []

    def replace(src, dst):
        moving_in = ".outputs." in str(src) and ".outputs." not in str(dst)
        if moving_in and ".previous." not in str(src):  # not a rollback's rename
            calls.append(dst)
            if len(calls) == fail_at + 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(AppliedTorchError) as info:
        write_set(models, reports, "new")
    assert str(info.value) == f"cannot write {calls[-1]}: {ENOSPC_LINE}"
    assert tree(tmp_path) == before
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("to", ["process", "another thread"])
def test_a_signal_during_the_moves_waits_until_the_set_is_complete(
    to, previous, tmp_path, monkeypatch
):
    """SIGTERM arriving between two renames is held: the whole set lands, then the stage stops.

    Also when the kernel hands the signal to another thread (a stage has several: MLflow's
    system-metrics sampler, tqdm's monitor): a signal mask set in the main thread misses that.
    """
    import threading

    from appliedtorch.core.cli import Terminated, signals_raise

    models, reports, _ = previous
    real_replace, sent = os.replace, []
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()

    def replace(src, dst):
        if ".outputs." in str(src) and ".outputs." not in str(dst) and not sent:
            sent.append(dst)
            if to == "process":
                os.kill(os.getpid(), signal.SIGTERM)  # delivered at once unless held
            else:
                signal.pthread_kill(other.ident, signal.SIGTERM)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    try:
        with pytest.raises(Terminated), signals_raise():
            write_set(models, reports, "new")
    finally:
        stop.set()
    assert sent
    assert (reports / "new.txt").read_text() == "new"  # the last file of the set arrived
    assert all(b"old" not in v for v in tree(tmp_path).values())
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("where", ["write", "fsync", "link"])
def test_a_full_disk_before_the_moves_changes_nothing(where, previous, tmp_path, monkeypatch):
    models, reports, before = previous
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "write":  # the disk fills while a file is written into the staging area
        real = Path.write_text

        def write(self, *a, **k):
            if self.parent.name == "sub" or "sub" in self.parts:
                raise full
            return real(self, *a, **k)

        monkeypatch.setattr(Path, "write_text", write)
        expected = reports / "sub" / "notes.txt"
    else:  # ... or shows only at fsync (delayed allocation), or when linking the previous file
        name = {"fsync": "fsync", "link": "link"}[where]
        monkeypatch.setattr(os, name, lambda *a: (_ for _ in ()).throw(full))
        expected = models / "m.pt"
    with pytest.raises(AppliedTorchError) as info:
        write_set(models, reports, "new")
    assert str(info.value) == f"cannot write {expected}: {ENOSPC_LINE}"
    assert tree(tmp_path) == before
    assert not leftovers(tmp_path)


def test_a_failure_in_the_block_removes_staging_and_new_directories(tmp_path):
    with pytest.raises(RuntimeError), output_set(tmp_path / "a" / "b") as out:
        write_text(out.path(tmp_path / "a" / "b" / "x.txt"), "x")
        raise RuntimeError("the stage failed after writing")
    assert list(tmp_path.iterdir()) == []  # not even the directories made for the set


def test_staging_left_by_a_killed_process_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".outputs.{dead}.tmp"
    stale.mkdir()
    (stale / "metrics.json").write_text("{}")
    with output_set(tmp_path) as out:
        write_text(out.path(tmp_path / "x.txt"), "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


# ---- a real full disk under a real stage --------------------------------------------------------


TINY = {
    "device": "cpu",
    "pinn": {"adam_steps": 10, "lbfgs_steps": 0, "lm_steps": 0},
    "math": {"gd_steps": 50},
}


@pytest.fixture
def workspace(tmp_path, mlflow_template_db, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(mlflow_template_db, ws / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ws / 'mlflow.db'}")
    monkeypatch.chdir(ws)
    yield ws
    mlflow.set_tracking_uri(None)  # in-process runs set MLflow's global URI


PREVIOUS_MATH = {
    "reports/math/metrics.json": b'{"previous": 1}\n',
    "reports/math/gradient_descent.png": b"previous picture",
    "reports/math/fft_spectrum.png": b"previous spectrum",
}


def test_math_demos_on_a_full_reports_disk(workspace, monkeypatch, capsys):
    """The pictures do not fit: one line naming the file, the previous set intact, run FAILED."""
    with tmpfs(workspace / "reports" / "math", "48k"):
        for rel, content in PREVIOUS_MATH.items():
            (workspace / rel).write_bytes(content)
        code, err = run_stage_here("math_demos", ["--reports", "reports/math"], monkeypatch, capsys)
        line = one_error_line(err)
        assert code == 1
        assert line.startswith("error: cannot write reports/math/")
        assert line.endswith(f".png: {ENOSPC_LINE}"), line
        assert {k: (workspace / k).read_bytes() for k in PREVIOUS_MATH} == PREVIOUS_MATH
        assert not leftovers(workspace)
        assert sorted(p.name for p in (workspace / "reports/math").iterdir()) == sorted(
            Path(k).name for k in PREVIOUS_MATH
        )
    assert run_statuses(workspace, "math-demos") == ["FAILED"]


def test_pinn_on_a_full_model_disk(workspace, monkeypatch, capsys):
    """Before: torch's `unexpected pos` and a new report set beside the old model. Now the
    model file does not fit, so neither it nor any report file changes."""
    previous = {"models/pinn.pt": b"previous pinn", "reports/pinn/metrics.json": b"{}\n"}
    (workspace / "reports/pinn").mkdir(parents=True)
    (workspace / "reports/pinn/metrics.json").write_bytes(previous["reports/pinn/metrics.json"])
    with tmpfs(workspace / "models", "4k"):  # one page: the previous model fills it
        (workspace / "models/pinn.pt").write_bytes(previous["models/pinn.pt"])
        argv = ["--model", "models/pinn.pt", "--reports", "reports/pinn"]
        code, err = run_stage_here("pinn", argv, monkeypatch, capsys)
        assert one_error_line(err) == f"error: cannot write models/pinn.pt: {ENOSPC_LINE}"
        assert code == 1
        assert {k: (workspace / k).read_bytes() for k in previous} == previous
        assert not leftovers(workspace)
        assert [p.name for p in (workspace / "reports/pinn").iterdir()] == ["metrics.json"]
    assert run_statuses(workspace, "pinn-ode") == ["FAILED"]


def test_report_on_a_full_disk(workspace, monkeypatch, capsys):
    with tmpfs(workspace / "reports", "4k"):
        (workspace / "reports/index.html").write_bytes(b"previous page")
        argv = ["--reports", "reports", "--out", "reports/index.html"]
        code, err = run_stage_here("report", argv, monkeypatch, capsys)
        assert one_error_line(err) == f"error: cannot write reports/index.html: {ENOSPC_LINE}"
        assert code == 1
        assert (workspace / "reports/index.html").read_bytes() == b"previous page"
        assert not leftovers(workspace)


def test_a_read_only_reports_disk_is_one_line(workspace, monkeypatch, capsys):
    """EROFS: found before any work by the writability check (root is refused too)."""
    with tmpfs(workspace / "reports" / "math", "1m"):
        for rel, content in PREVIOUS_MATH.items():
            (workspace / rel).write_bytes(content)
        subprocess.run(["mount", "-o", "remount,ro", str(workspace / "reports/math")], check=True)
        code, err = run_stage_here("math_demos", ["--reports", "reports/math"], monkeypatch, capsys)
        line = one_error_line(err)
        assert code == 1
        assert line.startswith("error: cannot write reports/math"), line
        assert {k: (workspace / k).read_bytes() for k in PREVIOUS_MATH} == PREVIOUS_MATH
    assert run_statuses(workspace, "math-demos") == []  # refused before the run started


@pytest.mark.slow  # ~12 s: a real (one-epoch) training run
def test_train_mlp_on_a_full_reports_disk_keeps_the_previous_model(workspace, monkeypatch, capsys):
    """Before: models/mlp.pt rewritten, then a traceback and a mix of old and new reports. Now
    the model file and reports/mlp/ are one set: none of them changes."""
    from appliedtorch.data.download.fetch import download

    download("mnist", workspace / "data/raw/mnist", "synthetic", synthetic_sizes=(40, 20))
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["mlp"] |= {"epochs": 1, "train_limit": 32}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    previous = {"models/mlp.pt": b"previous mlp", "reports/mlp/metrics.json": b'{"previous": 1}\n',
                "reports/mlp/history.csv": b"epoch\n1\n"}  # fmt: skip
    (workspace / "models").mkdir()
    (workspace / "models/mlp.pt").write_bytes(previous["models/mlp.pt"])
    with tmpfs(workspace / "reports/mlp", "16k"):
        for rel in ("reports/mlp/metrics.json", "reports/mlp/history.csv"):
            (workspace / rel).write_bytes(previous[rel])
        argv = ["--data", "data/raw/mnist", "--model", "models/mlp.pt", "--reports", "reports/mlp"]
        code, err = run_stage_here("train_mlp", argv, monkeypatch, capsys)
        line = one_error_line(err)
        assert code == 1
        assert re.fullmatch(rf"error: cannot write reports/mlp/\S+: {ENOSPC_LINE}", line), line
        assert {k: (workspace / k).read_bytes() for k in previous} == previous
        assert not leftovers(workspace)
        assert sorted(p.name for p in (workspace / "reports/mlp").iterdir()) == [
            "history.csv", "metrics.json"]  # fmt: skip
    assert run_statuses(workspace, "mnist-mlp") == ["FAILED"]
