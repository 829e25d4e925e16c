"""A catalogue of bad inputs, each run through a real stage script: params, data, environment.

Every case must end with exactly one line `error: <problem and what to do>` on stderr, no
traceback, a nonzero exit code (2 for params, 1 otherwise), and the workspace untouched: every
file (earlier outputs, data, the tracking database) keeps its bytes and mtime, and nothing new
(not even a temporary file) appears.

The scripts run in-process (`runpy`, as `python stages/<stage>.py` would, `run_stage` and all;
an escaping exception fails the test the way a traceback fails a user); a subprocess costs ~10 s
of imports per case on a busy machine. `test_real_process` runs a few cases as real processes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import runpy
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from appliedtorch.data import synthetic
from appliedtorch.data.download.fetch import download
from helpers import REPO, merge
from helpers.models import tiny_model_file
from helpers.stage_runs import stage_script

ARGS = {  # as in dvc.yaml, relative to the workspace
    "download": ["--dataset", "mnist", "--out", "data/raw/mnist"],
    "math_demos": ["--reports", "reports/math"],
    "pinn": ["--model", "models/pinn.pt", "--reports", "reports/pinn"],
    "train_mlp": ["--section", "mlp", "--data", "data/raw/mnist", "--model", "models/mlp.pt",
                  "--reports", "reports/mlp"],
    "train_cnn": ["--section", "cnn", "--data", "data/raw/cifar10", "--model", "models/cnn.pt",
                  "--reports", "reports/cnn"],
    "report": ["--reports", "reports", "--out", "reports/index.html"],
    "register": ["--classifier", "mlp", "reports/mlp/metrics.json", "models/mlp.pt"],
    # commands, not stages: no --params of their own (recipes names it after its subcommand)
    "predict": ["--model", "evil.pt", "digit.png"],
    "recipes": ["compare", "recipe.yaml", "--params", "params.yaml", "--name", "sweep"],
}  # fmt: skip
MODULES = {"predict": "appliedtorch.classify.inference.predict", "recipes": "appliedtorch.recipes"}
TINY = {
    "device": "cpu",
    "data": {"source": "synthetic", "synthetic": {"mnist_train": 40, "mnist_test": 20}},
    "mlp": {"epochs": 1, "train_limit": 32},
    "cnn": {"epochs": 1, "train_limit": 32},
    "pinn": {"adam_steps": 10, "lbfgs_steps": 0, "lm_steps": 0},
    "math": {"gd_steps": 50},
}
PREVIOUS = {  # outputs of an earlier good run, which a failed run must leave alone
    "models/mlp.pt": b"previous mlp",
    "models/cnn.pt": b"previous cnn",
    "models/pinn.pt": b"previous pinn",
    **{f"reports/{r}/metrics.json": b'{"previous": 1}\n' for r in ("mlp", "cnn", "math", "pinn")},
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- ways to break a workspace -----------------------------------------------------------------


def rm(rel: str) -> Callable[[Path], None]:
    return lambda ws: shutil.rmtree(ws / rel) if (ws / rel).is_dir() else (ws / rel).unlink()


def truncate(rel: str) -> Callable[[Path], None]:
    def go(ws: Path) -> None:
        path = ws / rel
        path.write_bytes(path.read_bytes()[:-100])

    return go


def overwrite_start(rel: str, garbage: bytes) -> Callable[[Path], None]:
    """Same size, damaged content: the size check cannot see it, the parser must."""

    def go(ws: Path) -> None:
        path = ws / rel
        raw = path.read_bytes()
        path.write_bytes(garbage + raw[len(garbage) :])

    return go


def make_file(rel: str) -> Callable[[Path], None]:
    """Put a regular file where an output directory goes: no write succeeds there, not even as
    root (root ignores permission bits, so chmod would not make this test mean anything)."""

    def go(ws: Path) -> None:
        path = ws / rel
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(b"a file in the way\n")

    return go


def write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda ws: (ws / rel).write_text(text)


def mkdir(rel: str) -> Callable[[Path], None]:
    return lambda ws: (ws / rel).mkdir()


def edit(rel: str, old: str | bytes, new: str | bytes) -> Callable[[Path], None]:
    """Replace the first `old` in a file (bytes or text); `old` = "" appends `new`."""

    def go(ws: Path) -> None:
        path = ws / rel
        raw = path.read_bytes()
        o, n = (x.encode() if isinstance(x, str) else x for x in (old, new))
        assert o in raw, old
        path.write_bytes(raw + n if not o else raw.replace(o, n, 1))

    return go


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def go(ws: Path) -> None:
        for step in steps:
            step(ws)

    return go


def laughs() -> str:
    """The YAML "billion laughs": ten levels, each listing the one before nine times (~1.5 KB)."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


class Payload:
    """Unpickling this runs a shell command that creates PWNED in the workspace."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


CIFAR_DIR = "data/raw/cifar10/cifar-10-batches-py"


def payload_in_data_raw(ws: Path) -> None:
    """data_batch_1 with a payload, and source.json updated to match it (md5 and size)."""
    batch = ws / CIFAR_DIR / "data_batch_1"
    content = pickle.loads(batch.read_bytes(), encoding="latin1")
    batch.write_bytes(pickle.dumps({**content, "labels": Payload()}, protocol=2))
    record_path = ws / "data/raw/cifar10/source.json"
    record = json.loads(record_path.read_text())
    record["files"]["cifar-10-batches-py/data_batch_1"] = {
        "md5": hashlib.md5(batch.read_bytes()).hexdigest(),
        "bytes": batch.stat().st_size,
    }
    record_path.write_text(json.dumps(record))


def payload_mirror(ws: Path) -> None:
    """A directory mirror whose CIFAR-10 tarball carries a payload, with a matching MD5SUMS."""
    files = synthetic.cifar10_files(0, 20, 10)
    content = pickle.loads(files["data_batch_1"], encoding="latin1")
    files["data_batch_1"] = pickle.dumps({**content, "labels": Payload()}, protocol=2)
    mirror = ws / "evil-mirror"
    mirror.mkdir()
    archive = mirror / synthetic.CIFAR10_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for fname, data in files.items():
            info = tarfile.TarInfo(f"{synthetic.CIFAR10_FOLDER}/{fname}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    (mirror / "MD5SUMS").write_text(f"{md5}  {archive.name}\n")


def bomb_mirror(ws: Path) -> None:
    """An MNIST mirror whose train images are ~2 MB of gzip that inflate to 2 GiB (2048 members
    of 1 MiB zeros: the trailer states 1 MiB), with a matching MD5SUMS."""
    mirror = ws / "bomb-mirror"
    mirror.mkdir()
    paths = synthetic.write_mnist(mirror, 0, 40, 20)
    (mirror / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\0" * (1 << 20), mtime=0) * 2048
    )
    sums = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n" for p in paths)
    (mirror / "MD5SUMS").write_text(sums)


def nan_model(rel: str) -> Callable[[Path], None]:
    """A tiny model file at `rel` whose last weight is NaN."""

    def go(ws: Path) -> None:
        saved = tiny_model_file(ws / rel, "mlp")
        list(saved["state_dict"].values())[-1].fill_(float("nan"))
        torch.save(saved, ws / rel)

    return go


def hostile_model(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """evil.pt: a tiny model file with `change` made to what it holds; digit.png to classify."""

    def go(ws: Path) -> None:
        saved = tiny_model_file(ws / "evil.pt", "mlp")
        change(saved)
        torch.save(saved, ws / "evil.pt")
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(ws / "digit.png")

    return go


def deflated(rel: str) -> Callable[[Path], None]:
    """The zip at `rel` rewritten with every entry deflated (torch.load reads that too, so a
    small file can inflate into gigabytes of tensors before any check)."""

    def go(ws: Path) -> None:
        path = ws / rel
        with zipfile.ZipFile(path) as src:
            entries = [(info, src.read(info)) for info in src.infolist()]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
            for info, data in entries:
                out.writestr(info.filename, data)

    return go


def fifo(rel: str) -> Callable[[Path], None]:
    """A FIFO at `rel`: opening it for reading waits for a writer for ever."""

    def go(ws: Path) -> None:
        (ws / rel).unlink(missing_ok=True)
        os.mkfifo(ws / rel)

    return go


RECIPE = write("recipe.yaml", "cnn.batch_norm: true\n")


# ---- the catalogue ---------------------------------------------------------------------------


@dataclass
class Case:
    stage: str
    message: str  # regex that the text after `error: ` must match from its start
    code: int = 1
    params: dict | str | None = None  # overrides, or the whole file's text
    setup: Callable[[Path], None] | None = None
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset
    args: dict[str, str] = field(default_factory=dict)  # replaced command-line values
    more: list[str] = field(default_factory=list)  # added command-line arguments
    seconds: float = 60  # to fail, on a busy 2-core machine (a hang guard: cases take ~0.1-5 s)


MNIST_RAW = "data/raw/mnist/MNIST/raw"
GPU = torch.cuda.is_available()
CUDA = f"cuda:{torch.cuda.device_count()}" if GPU else "cuda"  # a device that is not there
HINT_URI = r"; set (tracking\.uri|MLFLOW_TRACKING_URI) to sqlite:///path/to/mlflow\.db or http\(s\)://host:port$"
REDO = r"; run `dvc repro download@(mnist|cifar10)` \(or `dvc pull` from the team remote\)$"

CASES = {
    # params.yaml: ParamsError, exit code 2, one line naming the key
    "unknown-key": Case("train_mlp", r"params\.yaml: unknown key 'mlp\.learning_rate'$", 2,
                        {"mlp": {"learning_rate": 0.1}}),
    "wrong-type-int": Case("train_mlp", r"params\.yaml: mlp\.epochs must be an integer \(got 'five'\)$",
                           2, {"mlp": {"epochs": "five"}}),
    "wrong-type-bool": Case("train_cnn", r"params\.yaml: cnn\.augment must be true or false \(got 'yes'\)$",
                            2, {"cnn": {"augment": "yes"}}),
    "negative-lr": Case("train_mlp", r"params\.yaml: mlp\.lr must be > 0 \(got -1\)$", 2,
                        {"mlp": {"lr": -1}}),
    "zero-lr": Case("train_cnn", r"params\.yaml: cnn\.lr must be > 0 \(got 0\)$", 2, {"cnn": {"lr": 0}}),
    "infinite-lr": Case("train_mlp", r"params\.yaml: mlp\.lr must be a finite number \(got inf\)$", 2,
                        {"mlp": {"lr": float("inf")}}),
    "zero-epochs": Case("train_cnn", r"params\.yaml: cnn\.epochs must be > 0 \(got 0\)$", 2,
                        {"cnn": {"epochs": 0}}),
    "negative-epochs": Case("train_mlp", r"params\.yaml: mlp\.epochs must be > 0 \(got -3\)$", 2,
                            {"mlp": {"epochs": -3}}),
    "zero-batch-size": Case("train_mlp", r"params\.yaml: mlp\.batch_size must be > 0 \(got 0\)$", 2,
                            {"mlp": {"batch_size": 0}}),
    "negative-batch-size": Case("train_cnn", r"params\.yaml: cnn\.batch_size must be > 0 \(got -8\)$",
                                2, {"cnn": {"batch_size": -8}}),
    "dropout-one": Case("train_cnn", r"params\.yaml: cnn\.dropout must be < 1 \(got 1\.0\)$", 2,
                        {"cnn": {"dropout": 1.0}}),
    "dropout-negative": Case("train_cnn", r"params\.yaml: cnn\.dropout must be >= 0 \(got -0\.1\)$",
                             2, {"cnn": {"dropout": -0.1}}),
    "negative-steps": Case("pinn", r"params\.yaml: pinn\.adam_steps must be >= 0 \(got -1\)$", 2,
                           {"pinn": {"adam_steps": -1}}),
    "bad-device-name": Case("math_demos",
                            r"params\.yaml: device must be auto, cpu, cuda or cuda:N \(got 'gpu'\)$",
                            2, {"device": "gpu"}),
    "malformed-yaml": Case("math_demos", r"params\.yaml: not valid YAML at line 2, column 1: ", 2,
                           "seed: [1, 2\n"),
    "empty-file": Case("pinn", r"params\.yaml: file is empty; it needs the sections data, mlp, ", 2, ""),
    "duplicate-key": Case("train_mlp", r"params\.yaml: key 'mlp\.lr' appears twice \(lines \d+ and "
                          r"\d+\); keep one$", 2, setup=edit("params.yaml", "  lr: 0.001\n",
                                                            "  lr: 0.001\n  lr: 0.1\n")),
    "repeated-section": Case("train_cnn", r"params\.yaml: section 'cnn' appears twice \(lines \d+ and "
                             r"\d+\); keep one$", 2, setup=edit("params.yaml", "", "cnn:\n  epochs: 1\n")),
    "yaml-billion-laughs": Case("pinn", r"params\.yaml: YAML anchor &l0 at line \d+: anchors and "
                                r"aliases are not allowed in params\.yaml; write the values out$", 2,
                                setup=edit("params.yaml", "", laughs())),
    "non-utf8-byte": Case("math_demos", r"params\.yaml: not UTF-8 text \(byte 0xff at line \d+\); "
                          r"save it as UTF-8$", 2, setup=edit("params.yaml", b"", b"# \xff\n")),
    "huge-integer-literal": Case("pinn", r"params\.yaml: not valid YAML: Exceeds the limit \(4300 "
                                 r"digits\).{0,60}$", 2,
                                 setup=edit("params.yaml", "adam_steps: 10", "adam_steps: 1" + "0" * 5000)),
    "long-bad-value": Case("train_mlp", r"params\.yaml: mlp\.epochs must be an integer \(got "
                           r"'x{36}\.\.\.\)$", 2, {"mlp": {"epochs": "x" * 5000}}),
    "seed-too-large": Case("train_mlp", r"params\.yaml: seed must be <= 4294967295 \(got "
                           r"18446744073709551616\)", 2, {"seed": 2**64}),
    "device-index-wraps": Case("math_demos", r"params\.yaml: device must be cuda:0 to cuda:127 \(got "
                               r"'cuda:256'\)$", 2, {"device": "cuda:256"}),
    "fft-no-samples": Case("math_demos", r"params\.yaml: math\.fft_sample_rate x math\.fft_duration "
                           r"must give 2 to 10000000 samples \(got 100 Hz x 0\.001 s = 0\)$", 2,
                           {"math": {"fft_duration": 0.001}}),
    "retries-uncapped": Case("download", r"params\.yaml: data\.retries must be <= 5 \(got 20\): each "
                             r"retry waits twice as long", 2, {"data": {"retries": 20}}),
    "params-not-found": Case("train_mlp", r"missing\.yaml: file not found \(run from the repository root\)$",
                             2, args={"--params": "missing.yaml"}),
    # the device: asked for, not there
    "cuda-without-gpu": Case("train_mlp", rf"device '{CUDA}' (was asked for but no CUDA GPU is "
                             r"available; set device: auto or device: cpu|does not exist)",
                             params={"device": CUDA}),
    # data: DataError, naming the file and how to get the data again
    "missing-data-raw": Case("train_mlp", r"data/raw/mnist: dataset mnist not found" + REDO,
                             setup=rm("data/raw/mnist")),
    "truncated-file": Case("train_mlp", rf"{MNIST_RAW}/t10k-images-idx3-ubyte has \d+ bytes, \d+ "
                           r"expected \(truncated or modified\)" + REDO,
                           setup=truncate(f"{MNIST_RAW}/t10k-images-idx3-ubyte")),
    # same size, other bytes: source.json's md5 catches it before any parser runs
    "same-size-idx": Case("train_mlp", rf"{MNIST_RAW}/train-images-idx3-ubyte does not match its md5 "
                          r"in source\.json \(modified or corrupt\)" + REDO,
                          setup=overwrite_start(f"{MNIST_RAW}/train-images-idx3-ubyte", b"\xff" * 4)),
    "same-size-pickle": Case("train_cnn", rf"{CIFAR_DIR}/test_batch does not match its md5 in "
                             r"source\.json \(modified or corrupt\)" + REDO,
                             setup=overwrite_start(f"{CIFAR_DIR}/test_batch", b"garbage!")),
    # ... and without a source.json (a bare torchvision directory) the parsers still say so
    "corrupt-idx-header": Case("train_mlp", rf"{MNIST_RAW}/train-images-idx3-ubyte: bad IDX header "
                               r"ffffffff " + r".*" + REDO,
                               setup=both(rm("data/raw/mnist/source.json"), overwrite_start(
                                   f"{MNIST_RAW}/train-images-idx3-ubyte", b"\xff" * 4))),
    "corrupt-pickle": Case("train_cnn", rf"{CIFAR_DIR}/test_batch is corrupt \(\w+: .{{1,100}}\)"
                           + REDO, setup=both(rm("data/raw/cifar10/source.json"),
                                              overwrite_start(f"{CIFAR_DIR}/test_batch", b"garbage!"))),
    # hostile data: a pickle that would run code, a decompression bomb (nothing runs, nothing is left)
    "pickle-payload-in-data-raw": Case("train_cnn", rf"{CIFAR_DIR}/data_batch_1 is not a CIFAR-10 "
                                       r"batch: its pickle calls posix\.system, which the format never "
                                       r"needs \(refused: unpickling it could run code\)" + REDO,
                                       setup=payload_in_data_raw),
    "pickle-payload-from-mirror": Case("download", r"cifar10 from evil-mirror is not a valid dataset: "
                                       r"cifar-10-batches-py/data_batch_1 is not a CIFAR-10 batch: "
                                       r"its pickle calls posix\.system",
                                       params={"data": {"source": "evil-mirror"}}, setup=payload_mirror,
                                       args={"--dataset": "cifar10", "--out": "data/raw/cifar10"}),
    "gzip-bomb-from-mirror": Case("download", r"train-images-idx3-ubyte\.gz from \S+ inflates past 94 "
                                  r"MB, more than any file of the dataset holds: refused \(a "
                                  r"decompression bomb or not this dataset\); set data\.source",
                                  params={"data": {"source": "bomb-mirror"}}, setup=bomb_mirror),
    "wrong-dataset": Case("train_mlp", r"data/raw/cifar10 holds cifar10, not mnist; pass the mnist "
                          r"directory \(data/raw/mnist\) or " + REDO[2:],
                          args={"--data": "data/raw/cifar10"}),
    "unreadable-record": Case("train_cnn", r"data/raw/cifar10/source\.json is unreadable \(.*\)" + REDO,
                              setup=write("data/raw/cifar10/source.json", "{not json")),
    "mirror-without-files": Case("download", r"cannot get train-images-idx3-ubyte\.gz for mnist: "
                                 r"tried \S+/empty-mirror/train-images-idx3-ubyte\.gz \(no such file\)"
                                 r"; set data\.source in params\.yaml to upstream, another mirror or "
                                 r"synthetic$",
                                 params={"data": {"source": "empty-mirror"}}, setup=mkdir("empty-mirror")),
    "source-nowhere": Case("download", r"data\.source 'no/such/mirror' is not upstream, synthetic, an "
                           r"http\(s\):// URL or an existing directory; set data\.source in params\.yaml$",
                           params={"data": {"source": "no/such/mirror"}}),
    # environment: outputs that cannot be written are found before any work
    "models-unwritable": Case("train_mlp", r"cannot write models: models is a file, not a directory; "
                              "move it away or pass another output path$", setup=make_file("models")),
    "reports-unwritable": Case("train_mlp", r"cannot write reports/mlp: reports/mlp is a file, not a "
                               "directory; ", setup=make_file("reports/mlp")),
    "pinn-models-unwritable": Case("pinn", r"cannot write models: models is a file",
                                   setup=make_file("models")),
    "math-reports-unwritable": Case("math_demos", r"cannot write reports/math: reports/math is a file",
                                    setup=make_file("reports/math")),
    # tracking: unreachable or malformed URI, before any work is lost
    "tracking-unreachable": Case("math_demos", r"MLflow tracking server http://127\.0\.0\.1:\d+ is not "
                                 r"reachable \(.*[Rr]efused\); start it, fix tracking\.uri in params\.yaml, "
                                 "or unset MLFLOW_TRACKING_URI$",
                                 env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{closed_port}"}),
    "tracking-bad-port": Case("train_mlp", r"tracking URI 'http://localhost:port5000' has an invalid port"
                              + HINT_URI, params={"tracking": {"uri": "http://localhost:port5000"}},
                              env={"MLFLOW_TRACKING_URI": None}),
    "tracking-bad-scheme": Case("math_demos", r"tracking URI 'htp://localhost:5000' has an unknown scheme "
                                r"'htp'" + HINT_URI, env={"MLFLOW_TRACKING_URI": "htp://localhost:5000"}),
    "tracking-in-memory": Case("pinn", r"tracking URI 'sqlite://' is not sqlite:///<path to the database "
                               r"file>" + HINT_URI, env={"MLFLOW_TRACKING_URI": "sqlite://"}),
    # environment: a log level logging does not know (a traceback before run_stage's try)
    "log-level-unknown": Case("math_demos", r"APPLIEDTORCH_LOG_LEVEL 'VERBOSE' is not a log level; set "
                              r"it to DEBUG, INFO, WARNING, ERROR or CRITICAL, or unset it$",
                              env={"APPLIEDTORCH_LOG_LEVEL": "verbose"}),
    # tracking: an unusable database or server, at once (MLflow retried for ~100 s); no password shown
    "tracking-db-is-directory": Case("math_demos", r"tracking database \S+/mlflow\.db is a directory, not "
                                     r"an sqlite file; move it away or set tracking\.uri",
                                     setup=both(rm("mlflow.db"), mkdir("mlflow.db"))),
    "tracking-db-damaged": Case("train_mlp", r"tracking database \S+/mlflow\.db is not an sqlite database "
                                r"\(damaged\?\); ", setup=write("mlflow.db", "not a database\n" * 100)),
    "tracking-password-http": Case("pinn", r"MLflow tracking server http://127\.0\.0\.1:\d+ is not reachable "
                                   r"\(.*[Rr]efused\); start it, fix tracking\.uri in params\.yaml, or unset "
                                   "MLFLOW_TRACKING_URI$",
                                   env={"MLFLOW_TRACKING_URI": "http://alice:s3cret@127.0.0.1:{closed_port}"}),
    "tracking-password-postgresql": Case("math_demos", r"tracking database server postgresql://alice:\*\*\*@"
                                         r"127\.0\.0\.1:\d+/mlflow is not reachable \(Connection refused\); ",
                                         env={"MLFLOW_TRACKING_URI":
                                              "postgresql://alice:s3cret@127.0.0.1:{closed_port}/mlflow"}),
    "tracking-uri-unclosed-ipv6": Case("math_demos", r"tracking URI 'http://\[::1:5000' is malformed "
                                       r"\(Invalid IPv6 URL\); set MLFLOW_TRACKING_URI to ",
                                       env={"MLFLOW_TRACKING_URI": "http://[::1:5000"}),
    "tracking-uri-bad-ip-with-password": Case("math_demos", r"tracking URI 'http://u:\*\*\*@\[zz\]:5000' "
                                              r"is malformed \('zz' does not appear to be an IPv4",
                                              env={"MLFLOW_TRACKING_URI": "http://u:s3cret@[zz]:5000"}),
    # the memory and device budget: refused before any work or allocation, with the estimate
    "pinn-net-too-big": Case("pinn", r"pinn\.hidden_sizes \[65536, 65536, 65536\] \(8,590 M weights\) "
                             r"needs ~\d+ GB for weights, gradients and Adam state; this (machine|process) "
                             r"has [\d.]+ [GM]B (memory available|left under [^;]+); use fewer or narrower layers",
                             params={"pinn": {"hidden_sizes": [65536] * 3}}),
    "resnet-too-wide": Case("train_cnn", r"cnn\.width 1024 with cnn\.arch resnet \(500 M weights\), "
                            r"cnn\.batch_size 4096 needs ~\d+ GB for activations of a batch of 4096; "
                            r"this (machine|process) has [\d.]+ [GM]B (memory available|left under [^;]+); "
                            r"use a smaller net",
                            params={"cnn": {"arch": "resnet", "width": 1024, "batch_size": 4096,
                                            "train_limit": None}}),
    "mlp-too-deep": Case("train_mlp", r"mlp\.hidden_size 1024 with mlp\.hidden_layers 256 \(268 M "
                         r"weights\), mlp\.batch_size 65536 needs ~\d+ GB for activations of a batch of "
                         r"60000; this (machine|process) has", params={"mlp": {"hidden_size": 1024,
                         "hidden_layers": 256, "batch_size": 65536, "train_limit": None}}),
    "device-mps-demos": Case("math_demos", r"device 'mps' \(Apple's GPU\) was asked for but this "
                             r"machine has none; set device: auto or device: cpu in params\.yaml$",
                             params={"device": "mps"}),
    "device-mps-training": Case("train_cnn", r"device 'mps' \(Apple's GPU\) was asked for",
                                params={"device": "mps"}),
    "device-mps-pinn": Case("pinn", r"device 'mps' \(Apple's GPU\) was asked for", params={"device": "mps"}),
    "compile-without-compiler": Case("train_mlp", r"mlp\.compile: true needs a C\+\+ compiler for "
                                     r"torch\.compile's CPU code \(\$CXX or g\+\+; none runs here\); "
                                     r"install one \(apt install g\+\+\) or set mlp\.compile: false$",
                                     params={"mlp": {"compile": True}}, env={"PATH": "/nonexistent"}),
    "gd-start-overflows": Case("math_demos", r"params\.yaml: math\.gd_start must be <= 1e\+75 \(got "
                               r"1e\+300\): f'\(x\) = 4x\^3 - 9x\^2 overflows float64 beyond", 2,
                               {"math": {"gd_start": 1e300}}),
    # a model file's metadata: checked before any network is built (tests/test_predict.py has more)
    "model-args-oversized": Case("predict", r"evil\.pt: model_args\.hidden_size must be <= 65536 \(got "
                                 r"1000000\)$", setup=hostile_model(lambda d: d["model_args"].update(
                                     hidden_size=10**6))),
    "model-args-of-terabytes": Case("predict", r"evil\.pt: state_dict\['net\.fc1\.weight'\] must be "
                                    r"\(65536, 784\) \(got \(16, 784\)\)$",
                                    setup=hostile_model(lambda d: d["model_args"].update(
                                        hidden_size=65536, hidden_layers=256))),
    "model-classes-per-output": Case("predict", r"evil\.pt: classes must name each of the 10 outputs "
                                     r"\(got 3 names\)$", setup=hostile_model(lambda d: d.update(
                                         classes=["a", "b", "c"]))),
    "model-input-shape-huge": Case("predict", r"evil\.pt: input_shape must be 1 or 3 channels of at most "
                                   r"512x512 pixels \(got 3x100000x100000\)$",
                                   setup=hostile_model(lambda d: d.update(input_shape=[3, 10**5, 10**5]))),
    "model-net-wrong-type": Case("predict", r"evil\.pt: net must be 'mlp', 'cnn' or 'resnet' \(got 7\)$",
                                 setup=hostile_model(lambda d: d.update(net=7))),
    "model-mean-wrong-type": Case("predict", r"evil\.pt: mean must be a list \(got '0\.5'\)$",
                                  setup=hostile_model(lambda d: d.update(mean="0.5"))),
    "model-unknown-key": Case("predict", r"evil\.pt: unknown key 'loader'$",
                              setup=hostile_model(lambda d: d.update(loader="os.system"))),
    "model-file-deflated": Case("predict", r"evil\.pt: '[^']+' is compressed, which torch\.save never "
                                r"does \(it could inflate past the file's size\)",
                                setup=both(hostile_model(lambda d: None), deflated("evil.pt"))),
    "model-file-fifo": Case("predict", r"evil\.pt: not a regular file \(a FIFO, device or socket\)$",
                            setup=both(hostile_model(lambda d: None), fifo("evil.pt"))),
    "image-fifo": Case("predict", r"digit\.png: not a regular file \(a FIFO, device or socket\)$",
                       setup=both(hostile_model(lambda d: None), fifo("digit.png"))),
    "params-fifo": Case("math_demos", r"params\.yaml: cannot read \(not a regular file: a FIFO, "
                        r"device or socket\)$", 2,
                        setup=fifo("params.yaml")),
    "params-a-directory": Case("math_demos", r"params\.yaml: cannot read \(a directory, not a file\)$",
                               2, setup=both(rm("params.yaml"), mkdir("params.yaml"))),
    "register-metrics-fifo": Case("register", r"reports/mlp/metrics\.json: not a readable metrics "
                                  r"file", setup=fifo("reports/mlp/metrics.json")),
    # the recipes command: every -S value and experiment name checked before anything is queued
    "recipes-alias-in-a-set": Case("recipes", r"-S cnn\.lr: YAML anchor &a at line 1: anchors and "
                                   r"aliases are not allowed", 2, setup=RECIPE, more=["-S", "cnn.lr=&a [*a]"]),
    "recipes-path-through-a-value": Case("recipes", r"cnn\.lr\.x: cnn\.lr is a value, not a section; set "
                                         r"cnn\.lr itself$", 2, setup=RECIPE, more=["-S", "cnn.lr.x=1"]),
    "recipes-name-dvc-refuses": Case("recipes", r"experiment name 'my sweep' is not one DVC takes: ", 2,
                                     setup=RECIPE, args={"--name": "my sweep"}),
    # the register stage: no run logged this metrics.json (and no progress bar before the line)
    "register-no-such-run": Case("register", r"no finished MLflow run in experiment 'mnist-mlp' at "
                                 r"\S+ logged reports/mlp/metrics\.json \(trained elsewhere",
                                 setup=both(write("reports/mlp/metrics.json", '{"test_accuracy": 0.5}\n'),
                                            lambda ws: tiny_model_file(ws / "models/mlp.pt"))),
    # torchrun's environment, checked: not a traceback from int()
    "world-size-not-a-number": Case("train_mlp", r"WORLD_SIZE must be a whole number \(got 'two'\)$",
                                    env={"WORLD_SIZE": "two"}),
    "rank-missing": Case("train_mlp", r"RANK is not set, though WORLD_SIZE is", env={"WORLD_SIZE": "2", "RANK": None}),
    "rank-out-of-range": Case("train_mlp", r"RANK must be between 0 and 1 \(got 5\)$",
                              env={"WORLD_SIZE": "2", "RANK": "5"}),
    # a diverged run's weights: refused where they are read, in one line naming the weight
    "predict-nan-weights": Case("predict", r"evil\.pt: weight '\S+' holds NaN or inf",
                                setup=hostile_model(lambda d: d["state_dict"][next(iter(d["state_dict"]))]
                                                    .fill_(float("nan")))),
    "predict-inf-weights": Case("predict", r"evil\.pt: weight '\S+' holds NaN or inf",
                                setup=hostile_model(lambda d: d["state_dict"][next(iter(d["state_dict"]))]
                                                    .fill_(float("inf")))),
    "register-nan-weights": Case("register", r"models/mlp\.pt: weight '\S+' holds NaN or inf",
                                 setup=both(write("reports/mlp/metrics.json", '{"test_accuracy": 0.5}\n'),
                                            nan_model("models/mlp.pt"))),
    # the report: an output path that cannot be written, before the page is built
    "report-out-under-a-file": Case("report", r"cannot write a-file: a-file is a file, not a directory; ",
                                    setup=write("a-file", "in the way\n"),
                                    args={"--out": "a-file/index.html"}),
}  # fmt: skip


# ---- running a case ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path) -> Path:
    """A workspace as after a good run: params.yaml, data/raw, earlier outputs, tracking DB."""
    ws = tmp_path_factory.mktemp("bad-inputs")
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    download("mnist", ws / "data/raw/mnist", "synthetic", synthetic_sizes=(40, 20))
    download("cifar10", ws / "data/raw/cifar10", "synthetic", synthetic_sizes=(20, 10))
    for rel, content in PREVIOUS.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(content)
    shutil.copy(mlflow_template_db, ws / "mlflow.db")
    return ws


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `root`: size, mtime and hash."""
    return {
        p.relative_to(root).as_posix(): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def prepare(case: Case, template: Path, tmp_path: Path) -> tuple[Path, list[str], dict]:
    """A private broken workspace, the stage's arguments and its environment."""
    ws = Path(shutil.copytree(template, tmp_path / "ws"))
    if isinstance(case.params, str):
        (ws / "params.yaml").write_text(case.params)
    elif case.params:
        params = merge(yaml.safe_load((ws / "params.yaml").read_text()), case.params)
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if case.setup:
        case.setup(ws)
    argv = [*([] if case.stage in MODULES else ["--params", "params.yaml"]), *ARGS[case.stage]]
    for flag, value in case.args.items():
        argv[argv.index(flag) + 1] = value
    argv += case.more
    env: dict[str, str | None] = {"MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}"}
    for key, value in case.env.items():
        env[key] = value.format(closed_port=closed_port()) if value else None
    return ws, argv, env


def check_error(case: Case, code: int | None, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr[-3000:]
    assert code == case.code, (code, lines)
    assert lines[0].startswith("error: ") and lines[0].isprintable(), lines
    assert re.match(case.message, lines[0].removeprefix("error: ")), lines[0]


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name: str, template: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    case = CASES[name]
    ws, argv, env = prepare(case, template, tmp_path)
    before = snapshot(ws)
    monkeypatch.chdir(ws)
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    script = stage_script(case.stage)[0]
    monkeypatch.setattr(sys, "argv", [script.name, *argv])
    capsys.readouterr()
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        if case.stage in MODULES:
            runpy.run_module(MODULES[case.stage], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(script), run_name="__main__")
    seconds = time.monotonic() - start
    check_error(case, exit_info.value.code, capsys.readouterr().err)
    assert snapshot(ws) == before  # nothing written, replaced, half-written or left behind
    assert seconds < case.seconds, f"{seconds:.1f} s to fail"  # at once, not after work


@pytest.mark.slow
def test_real_process(template: Path, tmp_path: Path) -> None:
    """The same contract from a real `python stages/<stage>.py`: stderr is the one line.

    (test_reliability runs two more real processes: a diverging run and a hung tracking server.)
    """
    case = CASES["reports-unwritable"]
    ws, argv, env = prepare(case, template, tmp_path)
    before = snapshot(ws)
    full_env = {k: v for k, v in os.environ.items() if k not in env} | {
        k: v for k, v in env.items() if v is not None
    }
    proc = subprocess.run(
        [sys.executable, str(stage_script(case.stage)[0]), *argv],
        cwd=ws,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    check_error(case, proc.returncode, proc.stderr)
    assert snapshot(ws) == before


def test_catalogue_is_broad() -> None:
    assert len(CASES) >= 20
    assert {c.stage for c in CASES.values()} == set(ARGS)  # every stage script is exercised
