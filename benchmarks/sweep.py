"""Time a 6-run MLP sweep on two local Ray nodes of one CPU each against the same runs one after
another (`dvc exp run` in the workspace, as a user would type them).

    python benchmarks/sweep.py                       # 2 variants x 3 seeds of the default MLP
    python benchmarks/sweep.py --train-limit 1000 --epochs 1 --json /tmp/sweep.json   # tiny runs

Builds a throwaway project copy under a temporary directory (a bare git remote, a directory DVC
remote, tracking in an sqlite file beside them: every node is on this machine), downloads the
synthetic data once, then times (1) the six `dvc exp run -S ...` one after another and (2)
`python -m appliedtorch.sweep run` on a head and a worker node started with `ray start
--num-cpus 1 --node-ip-address 127.0.0.1`. Prints both wall times, their ratio and the CPU.
The sweep pays for a clone, `dvc push` and `dvc exp push` per run; the sequential runs do not.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads (the stages it starts decide for themselves)

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from appliedtorch.machine.hardware import cpu_description

# The tests' helpers are a package in tests/ (pytest puts that folder on sys.path for the suite).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.repo import mnist_mlp_stages

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VARIANTS = {"baseline": [], "fast": ["mlp.lr=0.01"]}
SEEDS = (42, 43, 44)
PORT = 6390


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    """Run `cmd`; its stdout, or SystemExit with its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def workspace(root: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """The project with small synthetic params, its data and commit pushed to local remotes."""
    ws = root / "ws"
    shutil.copytree(REPO / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", ws / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, ws / name)
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = mnist_mlp_stages(pipeline)
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    params["data"] |= {"source": "synthetic"}
    params["data"]["synthetic"] |= {"mnist_train": args.train_limit, "mnist_test": 1000}
    params["mlp"] |= {"epochs": args.epochs, "train_limit": args.train_limit}
    params["tracking"] |= {"uri": f"sqlite:///{root / 'mlflow.db'}", "system_metrics": False}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # As on a user's machine: bytecode written (the runs in turn reuse it; each clone writes its own).
    drop = ("MLFLOW_TRACKING_URI", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {"PYTHONPATH": str(ws / "src"), "DVC_NO_ANALYTICS": "1", "RAY_AUTH_MODE": "disabled"}
    env |= {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@appliedtorch.invalid"}
    env |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@appliedtorch.invalid"}
    dvc = [sys.executable, "-m", "dvc"]
    sh(["git", "init", "-q", "-b", "main"], ws, env)
    sh(["git", "init", "-q", "--bare", str(root / "git-remote")], ws, env)
    sh(["git", "remote", "add", "origin", str(root / "git-remote")], ws, env)
    sh([*dvc, "init", "-q"], ws, env)
    sh([*dvc, "remote", "add", "-d", "store", str(root / "dvc-remote")], ws, env)
    sh([*dvc, "repro", "download@mnist"], ws, env)
    sh(["git", "add", "-A"], ws, env)
    sh(["git", "commit", "-qm", "benchmark workspace"], ws, env)
    sh([*dvc, "push", "-q"], ws, env)
    sh(["git", "push", "-q", "origin", "main"], ws, env)
    return ws, env


def one_after_another(ws: Path, env: dict) -> float:
    """Seconds for the six `dvc exp run`s in the workspace, one after another."""
    start = time.monotonic()
    for variant, sets in VARIANTS.items():
        for seed in SEEDS:
            items = [a for s in [*sets, f"seed={seed}", "mlp.threads=1"] for a in ("-S", s)]
            name = f"seq-{variant}-s{seed}"
            sh(
                [sys.executable, "-m", "dvc", "exp", "run", "-n", name, *items, "train_mlp"],
                ws,
                env,
            )
    return time.monotonic() - start


def on_two_nodes(ws: Path, env: dict, root: Path) -> float:
    """Seconds for the same six runs as `python -m appliedtorch.sweep run` on two local nodes."""
    sh(["git", "checkout", "-q", "."], ws, env)  # the last experiment applied its params
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    start = [str(BIN / "ray"), "start", "--num-cpus=1", "--node-ip-address=127.0.0.1"]
    start += ["--disable-usage-stats", "--block", f"--temp-dir={temp}"]
    head = [*start, "--head", f"--port={PORT}", "--include-dashboard=false"]
    nodes = []
    try:
        for i, cmd in enumerate([head, [*start, f"--address=127.0.0.1:{PORT}"]]):
            log = (root / f"node{i}.log").open("w")
            nodes.append(
                subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
            )
            time.sleep(15 if i == 0 else 10)  # the head's GCS first; the worker then registers
        sweep = [sys.executable, "-m", "appliedtorch.sweep", "run", "bench", "--seeds", "3"]
        sweep += ["--variant", "fast", "mlp.lr=0.01", "--stage", "train_mlp", "--clones", str(root)]
        began = time.monotonic()
        print(sh([*sweep, "--address", f"127.0.0.1:{PORT}"], ws, env), flush=True)
        return time.monotonic() - began
    finally:
        for proc in nodes:  # each node's processes are its own session: stopped by its id
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in nodes:
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # params.yaml's MLP: all 60,000 training images of (synthetic) MNIST, 5 epochs.
    parser.add_argument("--train-limit", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="appliedtorch-sweep-bench-") as tmp:
        ws, env = workspace(Path(tmp), args)
        sequential = one_after_another(ws, env)
        swept = on_two_nodes(ws, env, Path(tmp))
    result = {
        "runs": 6,
        "one_after_another_seconds": round(sequential, 1),
        "two_nodes_seconds": round(swept, 1),
        "ratio": round(swept / sequential, 3),
        "cpu": cpu_description(),
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
