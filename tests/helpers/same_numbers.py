"""Run every stage on tiny synthetic data with fixed seeds; collect metrics and model hashes.

    PYTHONPATH=tests python -m helpers.same_numbers > tests/golden/same_numbers.json  # rarely!

On a CPU with another signature (`cpu_signature`), the numbers may be recorded beside it, as
`tests/golden/same_numbers-<name>.json`, with the code of a commit whose numbers already passed
(say which in its "recorded_with"): never with the change under test.

`tests/test_same_numbers.py` runs this and compares with the recorded file: moving or tidying
code must not change a single number on the CPU. Timing values are left out (they are the only
values allowed to differ between two runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from helpers import REPO, merge
from helpers.repo import SHRUNK

TINY = {
    "seed": 7,
    "device": "cpu",
    "data": {
        "source": "synthetic",
        "synthetic": {
            "seed": 3,
            "mnist_train": 600,
            "mnist_test": 200,
            "cifar10_train": 300,
            "cifar10_test": 100,
        },
    },
    # fp32, as recorded: `bf16: auto` would pick bf16 on CPUs that have it natively.
    "mlp": {"epochs": 2, "batch_size": 32, "bf16": False},
    "cnn": {"epochs": 2, "batch_size": 32, "step_size": 1, "bf16": False},
    "pinn": {"adam_steps": 200, "lbfgs_steps": 30, "lm_steps": 50},
    # the inverse and family problems as small as the built pipeline's (recorded so)
    "pinn_inverse": SHRUNK["pinn_inverse"],
    "pinn_family": SHRUNK["pinn_family"],
}

STAGES = {
    "mlp": [
        "stages/train.py",
        "--section",
        "mlp",
        "--data",
        "{w}/data/mnist",
        "--model",
        "{w}/models/mlp.pt",
        "--reports",
        "{w}/reports/mlp",
    ],
    "cnn": [
        "stages/train.py",
        "--section",
        "cnn",
        "--data",
        "{w}/data/cifar10",
        "--model",
        "{w}/models/cnn.pt",
        "--reports",
        "{w}/reports/cnn",
    ],
    "pinn": ["stages/pinn.py", "--model", "{w}/models/pinn.pt", "--reports", "{w}/reports/pinn"],
    "math": ["stages/math_demos.py", "--reports", "{w}/reports/math"],
    "pinn_inverse": [
        "stages/pinn_inverse.py",
        "--observations",
        "{w}/data/pinn/observations.csv",
        "--reports",
        "{w}/reports/pinn_inverse",
    ],
    "pinn_family": [
        "stages/pinn_family.py",
        "--model",
        "{w}/models/pinn_family.pt",
        "--reports",
        "{w}/reports/pinn_family",
    ],
}


def _timing(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last == "seconds" or last.endswith("_seconds")


def _flat(obj: object, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out: dict = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def cpu_signature() -> str:
    """What decides the last bits of a CPU result: torch's version and kernel level, and the CPU
    itself (vendor and family: MKL and oneDNN pick kernels by them; the flags that select
    kernels; the core count, which splits reductions). Two CPUs at the same kernel level (an
    Intel AVX-512 Xeon and an AMD Zen 4) round differently."""
    import torch

    from appliedtorch.machine.hardware import cpu_description

    cpu = cpu_description()
    return (
        f"torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()} {platform.machine()}"
        f" {cpu['vendor']} family {cpu['family']}, {cpu['cores']} cores,"
        f" flags {' '.join(cpu['flags'])}"
    )


def collect() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
        params["tracking"]["uri"] = f"sqlite:///{w}/mlflow.db"
        (w / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["PYTHONUNBUFFERED"] = "1"

        def run(args: list[str]) -> None:
            cmd = [
                sys.executable,
                *[a.format(w=w) for a in args],
                "--params",
                str(w / "params.yaml"),
            ]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")

        for name in ("mnist", "cifar10"):
            run(["stages/download.py", "--dataset", name, "--out", f"{{w}}/data/{name}"])
        run(["stages/pinn_observations.py", "--out", "{w}/data/pinn/observations.csv"])
        out: dict = {"cpu": cpu_signature(), "stages": {}}
        for stage, args in STAGES.items():
            run(args)
            reports = w / "reports" / stage
            metrics = json.loads((reports / "metrics.json").read_text())
            # metrics.json holds the headline; the details have their own files (a classifier's
            # per_class.json, the PINN's phases.json, the demos' demos.json) and the recorded
            # numbers hold them all.
            details_files = ("per_class.json", "phases.json", "demos.json", "bvp.json", "run.json")
            for details in (*details_files, "details.json"):
                if (reports / details).exists():
                    metrics |= json.loads((reports / details).read_text())
            entry = {"metrics": {k: v for k, v in _flat(metrics).items() if not _timing(k)}}
            model = w / "models" / f"{stage}.pt"
            if model.exists():
                entry["model_sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
            out["stages"][stage] = entry
        return out


if __name__ == "__main__":
    json.dump(collect(), sys.stdout, indent=2, sort_keys=True)
    print()
