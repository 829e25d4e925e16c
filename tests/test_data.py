"""Datasets: synthetic generator and formats, download from mirrors (HTTP on 127.0.0.1 and a
directory), every failure mode of a download, and loading. Offline: nothing leaves 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.server
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
import threading
import time
import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from appliedtorch.core.errors import DataError
from appliedtorch.data import datasets, synthetic
from appliedtorch.data.datasets import DATASETS_BY_NAME, UpstreamFile
from appliedtorch.data.download import extract, transport
from appliedtorch.data.download import fetch as data
from appliedtorch.data.download.fetch import download
from appliedtorch.data.limits import MAX_DOWNLOAD_BYTES, MAX_MEMBER_BYTES, Limits
from appliedtorch.data.loading import load_dataset
from helpers import REPO
from helpers.data import need_fashion_mnist
from helpers.servers import silent_server

SIZES = {"mnist": (120, 40), "cifar10": (60, 20)}  # (train, test): tiny, still every batch
MNIST_GZ = "train-images-idx3-ubyte.gz"


@pytest.fixture(autouse=True)
def no_proxy_for_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """An http_proxy in the environment must not swallow requests to the test servers."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def mirror_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mirror of synthetic files under the upstream names, with MD5SUMS."""
    d = tmp_path_factory.mktemp("mirror")
    synthetic.write_mirror(d, 0, SIZES["mnist"], SIZES["cifar10"])
    return d


@pytest.fixture
def mirror(mirror_template: Path, tmp_path: Path) -> Path:
    """A private copy of the mirror that a test may damage."""
    return Path(shutil.copytree(mirror_template, tmp_path / "mirror"))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class CutOffHandler(QuietHandler):
    """Promises the whole file, sends 100 bytes and hangs up (no MD5SUMS)."""

    def do_GET(self) -> None:
        if self.path.endswith("MD5SUMS"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + b"\0" * 98)
        self.close_connection = True


@contextlib.contextmanager
def serve(directory: Path, handler: type = QuietHandler) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1; yield the base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


# ---- the synthetic generator and its formats ---------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_generate_is_deterministic_with_upstream_shapes(name: str) -> None:
    images, labels = synthetic.generate(name, 50, seed=3)
    assert images.shape == (50, *synthetic.SHAPES[name]) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))  # balanced: 5 each
    again, again_labels = synthetic.generate(name, 50, seed=3)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, synthetic.generate(name, 50, seed=4)[0])
    assert not np.array_equal(images, synthetic.generate(name, 50, seed=3, split="test")[0])
    assert 10 < images.mean() < 200 and images.std() > 20  # not blank, not saturated


def test_mnist_files_read_by_torchvision_and_our_loader(mirror: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw" / "mnist"
    download("mnist", out, str(mirror))
    n_train, n_test = SIZES["mnist"]
    images, labels = synthetic.generate("mnist", n_train, 0, "train")
    tv = torchvision.datasets.MNIST(out, train=True)  # torchvision's own reader
    np.testing.assert_array_equal(tv.data.numpy(), images[:, 0])
    np.testing.assert_array_equal(tv.targets.numpy(), labels)
    loaded = load_dataset("mnist", out)
    assert loaded.train_images.dtype == torch.uint8 and loaded.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(loaded.train_images.numpy(), images)
    np.testing.assert_array_equal(
        loaded.test_labels.numpy(), synthetic.generate("mnist", n_test, 0, "test")[1]
    )
    assert loaded.classes == torchvision.datasets.MNIST.classes
    assert loaded.source == str(mirror) and not loaded.synthetic


def test_cifar10_batches_pickled_like_upstream(mirror: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw" / "cifar10"
    download("cifar10", out, str(mirror))
    batch = out / "cifar-10-batches-py" / "data_batch_1"
    # torchvision reads with latin1 (str keys); the CIFAR-10 page's recipe with bytes (b"data").
    as_str = pickle.loads(batch.read_bytes(), encoding="latin1")
    as_bytes = pickle.loads(batch.read_bytes(), encoding="bytes")
    assert set(as_str) == {"batch_label", "labels", "data", "filenames"}
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert as_str["data"].dtype == np.uint8 and as_str["data"].shape == (12, 3072)
    assert as_bytes[b"batch_label"] == b"training batch 1 of 5"
    meta = pickle.loads((batch.parent / "batches.meta").read_bytes(), encoding="latin1")
    assert meta["label_names"] == synthetic.CIFAR10_CLASSES and meta["num_vis"] == 3072
    images, labels = synthetic.generate("cifar10", SIZES["cifar10"][0], 0, "train")
    loaded = load_dataset("cifar10", out)
    np.testing.assert_array_equal(loaded.train_images.numpy(), images)  # (N, 3, 32, 32)
    np.testing.assert_array_equal(loaded.train_labels.numpy(), labels)
    assert loaded.test_images.shape == (SIZES["cifar10"][1], 3, 32, 32)
    assert loaded.classes == synthetic.CIFAR10_CLASSES


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_synthetic_source_records_itself(name: str, tmp_path: Path) -> None:
    out = tmp_path / "data" / "raw" / name
    record = download(name, out, "synthetic", synthetic_seed=1, synthetic_sizes=SIZES[name])
    assert record["source"] == "synthetic" and record["synthetic"]["seed"] == 1
    for rel, info in record["files"].items():
        assert hashlib.md5((out / rel).read_bytes()).hexdigest() == info["md5"]
    loaded = load_dataset(name, out)
    assert loaded.source == "synthetic" and loaded.synthetic
    assert len(loaded.train_labels) == SIZES[name][0] and len(loaded.test_labels) == SIZES[name][1]
    expected, _ = synthetic.generate(name, SIZES[name][1], 1, "test")
    np.testing.assert_array_equal(loaded.test_images.numpy(), expected)
    assert [p.name for p in out.parent.iterdir()] == [name]  # no staging directory left
    umask = os.umask(0)
    os.umask(umask)
    assert (
        out.stat().st_mode & 0o777 == 0o777 & ~umask
    )  # a normal directory, not a private temp one


def test_small_model_beats_chance_by_far_but_not_trivially() -> None:
    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in synthetic.generate("mnist", 3000, 0, "train"))
    xt, yt = (torch.from_numpy(a) for a in synthetic.generate("mnist", 1000, 0, "test"))
    x, xt = x.flatten(1).float() / 255, xt.flatten(1).float() / 255
    model = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance is 0.1
    # Not trivially separable: the nearest class mean gets a good way, but far from all.
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    nearest = torch.cdist(xt, means).argmin(1)
    assert 0.3 < (nearest == yt).float().mean().item() < 0.95


# ---- mirrors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_http_mirror_with_md5sums(name: str, mirror: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    with serve(mirror) as url:
        record = download(name, out, url, timeout=5, retries=0)
    assert {d["checked_against"] for d in record["downloads"]} == {"MD5SUMS"}
    assert all(d["url"].startswith(url) for d in record["downloads"])
    assert len(load_dataset(name, out).train_labels) == SIZES[name][0]


@pytest.mark.parametrize("transport", ["http", "directory"])
def test_mirror_without_md5sums_is_checked_against_upstream_sums(
    transport: str, mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (mirror / "MD5SUMS").unlink()
    with serve(mirror) as url:
        source = url if transport == "http" else str(mirror)
        # The real upstream sums: synthetic files must be refused, naming the sum they missed.
        with pytest.raises(DataError, match=r"does not match the upstream md5 f68b3c2d"):
            download("mnist", tmp_path / "refused", source, retries=0)
        # Pretend upstream published these files' sums: then they pass.
        sums = tuple(
            UpstreamFile(f.name, hashlib.md5((mirror / f.name).read_bytes()).hexdigest())
            for f in DATASETS_BY_NAME["mnist"].files
        )
        mnist = dataclasses.replace(DATASETS_BY_NAME["mnist"], bases=(), files=sums)
        monkeypatch.setitem(DATASETS_BY_NAME, "mnist", mnist)
        record = download("mnist", tmp_path / "mnist", source, retries=0)
    assert {d["checked_against"] for d in record["downloads"]} == {"upstream md5"}
    assert not (tmp_path / "refused").exists()
    assert len(load_dataset("mnist", tmp_path / "mnist").test_labels) == SIZES["mnist"][1]


def test_directory_mirror_with_md5sums_and_existing_output_replaced(
    mirror: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mnist"
    download("mnist", out, "synthetic", synthetic_sizes=(30, 10))
    sums = mirror / "MD5SUMS"  # as `md5sum -b` writes it: binary-mode marker, a comment
    sums.write_text("# md5sum -b *\n" + sums.read_text().replace("  ", " *"))
    record = download("mnist", out, str(mirror))
    assert {d["checked_against"] for d in record["downloads"]} == {"MD5SUMS"}
    assert len(load_dataset("mnist", out).train_labels) == SIZES["mnist"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "mnist"]


def test_upstream_mirrors_are_tried_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bases = [f"http://127.0.0.1:{closed_port()}/a/", f"http://127.0.0.1:{closed_port()}/b/"]
    mnist = dataclasses.replace(DATASETS_BY_NAME["mnist"], bases=tuple(bases))
    monkeypatch.setitem(DATASETS_BY_NAME, "mnist", mnist)
    start = time.perf_counter()
    with pytest.raises(DataError) as exc:
        download("mnist", tmp_path / "data" / "mnist", "upstream", retries=1, backoff=0.05)
    message = str(exc.value)
    assert message.index(bases[0] + MNIST_GZ) < message.index(bases[1] + MNIST_GZ)
    assert message.count("connection refused") == 2 and "\n" not in message
    assert "`dvc pull`" not in message and "data.source" in message and "synthetic" in message
    assert time.perf_counter() - start < 5
    assert leftovers(tmp_path) == []


def test_malformed_md5sums_is_refused(mirror: Path, tmp_path: Path) -> None:
    (mirror / "MD5SUMS").write_text("not-a-sum  train-images-idx3-ubyte.gz\n")
    with pytest.raises(DataError, match=r"MD5SUMS line 1 is not in md5sum format"):
        download("mnist", tmp_path / "mnist", str(mirror))
    assert not (tmp_path / "mnist").exists()


# ---- failures: one line, exit code 1, nothing left behind ---------------------------------------


def corrupt(mirror: Path) -> None:
    path = mirror / MNIST_GZ
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(mirror: Path) -> None:
    path = mirror / MNIST_GZ
    path.write_bytes(path.read_bytes()[:500])


def remove(mirror: Path) -> None:
    (mirror / MNIST_GZ).unlink()


FAILURES = {
    # case: (how to break the mirror, how to serve it, what the error line must say)
    "corrupt": (
        corrupt,
        "http",
        rf"cannot get {MNIST_GZ} for mnist: tried .*md5 [0-9a-f]{{32}} of \d+ bytes does not match the MD5SUMS",
    ),
    "truncated": (truncate, "http", r"md5 [0-9a-f]{32} of 500 bytes does not match the MD5SUMS"),
    "missing-http": (
        remove,
        "http",
        rf"tried http://127\.0\.0\.1:\d+/{MNIST_GZ} \(not found \(HTTP 404\)\)",
    ),
    "missing-dir": (remove, "directory", rf"tried \S+/{MNIST_GZ} \(no such file\)"),
    "cut-off": (None, "cut-off", r"\(connection closed after 100 of 100000 bytes\)"),
    "closed-port": (
        None,
        "closed",
        r"cannot read http://127\.0\.0\.1:\d+/MD5SUMS for mnist \(connection refused\)",
    ),
    "no-answer": (
        None,
        "silent",
        r"cannot read http://127\.0\.0\.1:\d+/MD5SUMS for mnist \(no answer within 0\.5 s\)",
    ),
}


@pytest.mark.parametrize("case", FAILURES)
def test_download_failure_is_one_line_and_leaves_nothing(
    case: str, mirror: Path, tmp_path: Path, params_file, monkeypatch, capsys
) -> None:
    breaker, transport, expected = FAILURES[case]
    if breaker:
        breaker(mirror)
    with contextlib.ExitStack() as stack:
        if transport == "directory":
            source = str(mirror)
        elif transport == "closed":
            source = f"http://127.0.0.1:{closed_port()}/"
        elif transport == "silent":
            source = stack.enter_context(silent_server()) + "/"
        else:
            handler = CutOffHandler if transport == "cut-off" else QuietHandler
            source = stack.enter_context(serve(mirror, handler))
        params = params_file({"data": {"source": source, "retries": 0, "timeout": 0.5}})
        out = tmp_path / "ws" / "data" / "raw" / "mnist"
        argv = ["download.py", "--params", str(params), "--dataset", "mnist", "--out", str(out)]
        monkeypatch.setattr(sys, "argv", argv)
        # The stage script in-process (run_stage and all): a subprocess per case costs seconds.
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / "stages" / "download.py"), run_name="__main__")
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert "mnist" in errors[0] and "data.source" in errors[0] and "synthetic" in errors[0]
    assert re.search(expected, errors[0]), errors[0]
    assert leftovers(tmp_path / "ws") == []  # not even data/raw


def test_stage_fails_fast_when_the_source_is_unreachable(tmp_path: Path, params_file) -> None:
    params = params_file({"data": {"source": f"http://127.0.0.1:{closed_port()}/", "retries": 2}})
    out = tmp_path / "data" / "raw" / "cifar10"
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages/download.py"),
            "--params",
            str(params),
            "--dataset",
            "cifar10",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot read http://127.0.0.1:") and "connection refused" in last
    assert "retry 2/2" in proc.stderr  # retried with backoff, then gave up
    assert elapsed < 60, elapsed  # interpreter start-up dominates; the retries take ~1.5 s
    assert not (tmp_path / "data").exists()


# ---- loading ----------------------------------------------------------------------------------


def test_load_dataset_says_what_is_missing_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset mnist not found; run `dvc repro download@mnist`"):
        load_dataset("mnist", tmp_path / "nothing")
    with pytest.raises(DataError, match=r"unknown dataset 'svhn'"):
        load_dataset("svhn", tmp_path)

    out = tmp_path / "mnist"
    download("mnist", out, "synthetic", synthetic_sizes=(20, 10))
    images = out / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte has \d+ bytes, \d+ expected .*dvc pull"
    ):
        load_dataset("mnist", out)
    images.unlink()
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte is missing; run `dvc repro download@mnist`"
    ):
        load_dataset("mnist", out)

    out = tmp_path / "cifar10"
    download("cifar10", out, "synthetic", synthetic_sizes=(10, 5))
    (out / "source.json").unlink()  # a bare torchvision-style directory still loads...
    assert load_dataset("cifar10", out).source == "unknown"
    (out / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"test_batch is corrupt"):  # ...until it is damaged
        load_dataset("cifar10", out)


def test_gzip_written_reproducibly(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        synthetic.write_mnist(d, 0, 10, 5)
        synthetic.write_cifar10(d, 0, 10, 5)
        time.sleep(1.1)  # gzip headers and tar members would carry the time
    for f in a.iterdir():
        assert f.read_bytes() == (b / f.name).read_bytes()
    assert gzip.decompress((a / MNIST_GZ).read_bytes())[:4] == b"\0\0\x08\x03"  # IDX: ubyte, 3-d


def test_a_hanging_name_lookup_is_bounded_by_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # urlopen's timeout does not cover DNS; a resolver that never answers must not hang the stage.
    monkeypatch.setattr(transport.socket, "getaddrinfo", lambda *a, **k: time.sleep(3))
    start = time.perf_counter()
    with pytest.raises(
        transport.FetchError, match=r"host lookup for example\.invalid took over 0\.2 s"
    ):
        transport.fetch_file("http://example.invalid/x.gz", Path("unused"), Limits(timeout=0.2), 10)
    assert time.perf_counter() - start < 1.5


# ---- hostile mirrors: code in pickles, bombs, trickles ------------------------------------------


class _Payload:
    """Unpickling this runs `touch <marker>`: what a hostile mirror would put in a batch."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def evil_cifar_mirror(mirror: Path, marker: Path) -> None:
    """Replace the mirror's CIFAR-10 tarball: data_batch_1 carries a payload; MD5SUMS matches."""
    files = synthetic.cifar10_files(0, *SIZES["cifar10"])
    batch = pickle.loads(files["data_batch_1"], encoding="latin1")
    files["data_batch_1"] = pickle.dumps({**batch, "labels": _Payload(marker)}, protocol=2)
    archive = mirror / synthetic.CIFAR10_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for fname, content in files.items():
            info = tarfile.TarInfo(f"{synthetic.CIFAR10_FOLDER}/{fname}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    sums = (mirror / "MD5SUMS").read_text().splitlines()
    sums = [f"{md5}  {archive.name}" if archive.name in s else s for s in sums]
    (mirror / "MD5SUMS").write_text("\n".join(sums) + "\n")


@pytest.mark.parametrize("transport", ["directory", "http"])
def test_pickle_payload_from_a_mirror_never_runs(
    transport: str, mirror: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "PWNED"
    evil_cifar_mirror(mirror, marker)
    out = tmp_path / "ws" / "data" / "raw" / "cifar10"
    start = time.perf_counter()
    with serve(mirror) as url, pytest.raises(DataError) as info:
        download("cifar10", out, url if transport == "http" else str(mirror), retries=0)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert "cifar-10-batches-py/data_batch_1 is not a CIFAR-10 batch" in message
    assert "posix.system" in message and "refused" in message
    assert not marker.exists()
    assert leftovers(tmp_path / "ws") == []  # no output, no staging, not even data/raw
    assert elapsed < 5, elapsed


def test_training_never_unpickles_a_payload(tmp_path: Path) -> None:
    """Same file in data/raw with a matching source.json (md5 and size): the loader refuses it."""
    marker = tmp_path / "PWNED"
    out = tmp_path / "cifar10"
    download("cifar10", out, "synthetic", synthetic_sizes=SIZES["cifar10"])
    batch_path = out / synthetic.CIFAR10_FOLDER / "data_batch_1"
    batch = pickle.loads(batch_path.read_bytes(), encoding="latin1")
    batch_path.write_bytes(pickle.dumps({**batch, "data": _Payload(marker)}, protocol=2))
    record = json.loads((out / "source.json").read_text())
    rel = f"{synthetic.CIFAR10_FOLDER}/data_batch_1"
    record["files"][rel] = {
        "md5": hashlib.md5(batch_path.read_bytes()).hexdigest(),
        "bytes": batch_path.stat().st_size,
    }
    (out / "source.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"data_batch_1 is not a CIFAR-10 batch: its pickle calls "):
        load_dataset("cifar10", out)
    assert not marker.exists()


def test_restricted_unpickler_reads_what_the_format_uses(tmp_path: Path) -> None:
    """Upstream's Python 2 pickles, Python 3's protocol 2 (bytes via _codecs) and protocol 5."""
    from appliedtorch.data.formats import load_cifar_batch

    array = np.arange(12, dtype=np.uint8).reshape(2, 6)
    for protocol in (2, 5):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps({"data": array, "raw": b"\x00\xff", "labels": [1]}, protocol))
        got = load_cifar_batch(path)
        assert np.array_equal(got["data"], array) and got["labels"] == [1]
    py2 = tmp_path / "py2"
    py2.write_bytes(synthetic.py2_pickle_bytes({"data": array, "batch_label": "b"}))
    assert np.array_equal(load_cifar_batch(py2)["data"], array)
    for evil in (_Payload(tmp_path / "x"), print, object()):
        path = tmp_path / "evil"
        path.write_bytes(pickle.dumps({"data": evil}, protocol=2))
        with pytest.raises(DataError, match=r"evil is not a CIFAR-10 batch: its pickle calls "):
            load_cifar_batch(path)
    assert not (tmp_path / "x").exists()


def gzip_bomb(path: Path, inflated_mib: int) -> None:
    """A gzip of `inflated_mib` MiB of zeros in ~1 KB per MiB: one 1 MiB member repeated, so the
    trailer states 1 MiB (a lying size) and the file is built in milliseconds."""
    member = gzip.compress(b"\0" * (1 << 20), mtime=0)
    path.write_bytes(member * inflated_mib)


@pytest.mark.parametrize("transport", ["directory", "http"])
def test_gzip_bomb_is_refused_quickly_with_bounded_memory(
    transport: str, mirror: Path, tmp_path: Path
) -> None:
    import tracemalloc

    gzip_bomb(mirror / MNIST_GZ, 2048)  # ~2 MB that inflates to 2 GiB
    md5 = hashlib.md5((mirror / MNIST_GZ).read_bytes()).hexdigest()
    sums = [s for s in (mirror / "MD5SUMS").read_text().splitlines() if MNIST_GZ not in s]
    (mirror / "MD5SUMS").write_text("\n".join([*sums, f"{md5}  {MNIST_GZ}"]) + "\n")
    out = tmp_path / "ws" / "mnist"
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with serve(mirror) as url, pytest.raises(DataError) as info:
            download("mnist", out, url if transport == "http" else str(mirror), retries=0)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert re.search(rf"{MNIST_GZ} from \S+ inflates past 94 MB, more than any file of the "
                     r"dataset holds: refused \(a decompression bomb or not this dataset\)",
                     str(info.value)), info.value  # fmt: skip
    assert peak < 32 << 20, peak  # streamed in 1 MiB chunks, never read whole
    assert elapsed < 10, elapsed  # ~1 s: stops at 94 MB, not 2 GiB
    assert leftovers(tmp_path / "ws") == []


def test_gzip_trailer_stating_a_size_its_data_does_not_have_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "x.gz"
    bomb.write_bytes(gzip.compress(b"\0" * 1000)[:-4] + (2**31).to_bytes(4, "little"))
    with pytest.raises(zlib.error, match="incorrect length check"):
        extract.gunzip(bomb, tmp_path / "x", MAX_MEMBER_BYTES["idx"])


def test_bytes_after_the_gzip_stream_are_named_as_such(tmp_path: Path) -> None:
    """Not "inflates past 94 MB" (what gzip's size field, now the appended bytes, would say)."""
    src = tmp_path / "x.gz"
    src.write_bytes(gzip.compress(b"digits" * 100) + b"garbage!")
    with pytest.raises(extract.BadArchive, match=r"8 bytes after the end of its gzip stream"):
        extract.gunzip(src, None, MAX_MEMBER_BYTES["idx"])


def test_zero_padding_and_a_second_member_read_as_gzip_reads_them(tmp_path: Path) -> None:
    src = tmp_path / "x.gz"
    src.write_bytes(gzip.compress(b"ab" * 10) + gzip.compress(b"cd") + b"\0" * 512)
    assert extract.gunzip(src, None, 100) == hashlib.md5(b"ab" * 10 + b"cd").hexdigest()


def test_tar_member_larger_than_any_batch_is_refused_from_its_header(tmp_path: Path) -> None:
    """The header's size is checked before a byte of the member is read (or inflated)."""
    info = tarfile.TarInfo(f"{synthetic.CIFAR10_FOLDER}/data_batch_1")
    info.size = 10**12  # a terabyte promised; the archive holds only the header
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
    start = time.perf_counter()
    match = r"holds cifar-10-batches-py/data_batch_1 of 1000000000000 bytes, past 64 MB"
    with pytest.raises(extract.TooLarge, match=match):
        extract.untar_cifar10(archive, tmp_path / "out", MAX_MEMBER_BYTES["cifar"])
    assert time.perf_counter() - start < 1
    assert list((tmp_path / "out").iterdir()) == []


def test_directory_mirror_refuses_devices_and_oversized_files(mirror: Path, tmp_path: Path) -> None:
    (mirror / MNIST_GZ).unlink()
    (mirror / MNIST_GZ).symlink_to("/dev/zero")  # copying it would never end
    with pytest.raises(DataError, match=rf"{MNIST_GZ} \(not a regular file\)"):
        download("mnist", tmp_path / "ws" / "mnist", str(mirror), retries=0)
    assert leftovers(tmp_path / "ws") == []


class TrickleHandler(QuietHandler):
    """Answers 200 with a Content-Length, then sends one byte every 0.1 s: each read succeeds
    well within `timeout`, so only a whole-file deadline stops it."""

    def do_GET(self) -> None:
        if self.path.endswith("MD5SUMS"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(600):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.1)


class TrickleHeadersHandler(QuietHandler):
    """Never finishes its headers: one header line every 0.1 s."""

    def do_GET(self) -> None:
        self.send_response(200)
        with contextlib.suppress(OSError):
            for i in range(600):
                self.send_header(f"X-Slow-{i}", "1")
                self.flush_headers()
                time.sleep(0.1)


@pytest.mark.parametrize("handler", [TrickleHandler, TrickleHeadersHandler])
def test_trickling_server_is_stopped_by_the_file_deadline(
    handler: type, mirror: Path, tmp_path: Path
) -> None:
    start = time.perf_counter()
    with serve(mirror, handler) as url, pytest.raises(DataError) as info:
        download("mnist", tmp_path / "ws" / "mnist", url, timeout=5, retries=2, file_timeout=1)
    elapsed = time.perf_counter() - start
    assert "not complete within 1 s (data.file_timeout)" in str(info.value), info.value
    assert elapsed < 4, elapsed  # one attempt (not retried), stopped at the deadline
    assert leftovers(tmp_path / "ws") == []


def test_announced_size_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    class Huge(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()

    match = r"1000000000000 bytes announced, larger than 95 MB"
    with serve(tmp_path, Huge) as url, pytest.raises(transport.FetchError, match=match):
        transport.fetch_file(url + "x.gz", tmp_path / "x", Limits(), MAX_DOWNLOAD_BYTES["idx"])


def test_backoff_waits_are_capped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    waits: list[float] = []
    monkeypatch.setattr(data.time, "sleep", waits.append)
    limits = Limits(timeout=0.5, file_timeout=5, retries=5, backoff=3.0)
    with pytest.raises(transport.FetchError, match="connection refused"):
        data.fetch_with_retries(f"http://127.0.0.1:{closed_port()}/x", tmp_path / "x", limits, 10)
    assert waits == [3.0, 6.0, 8.0, 8.0, 8.0]


def test_stale_staging_of_a_killed_download_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".mnist.{dead_pid}.0badc0de.tmp"
    (stale / "MNIST").mkdir(parents=True)
    (stale / "MNIST" / "half").write_bytes(b"x")
    stale_old = tmp_path / f".mnist.{dead_pid}.old"
    stale_old.mkdir()
    live = tmp_path / f".mnist.{os.getppid()}.12345678.tmp"  # a running download: kept
    live.mkdir()
    other = tmp_path / f".cifar10.{dead_pid}.0badc0de.tmp"  # another dataset's: not ours
    other.mkdir()
    download("mnist", tmp_path / "mnist", "synthetic", synthetic_sizes=(20, 10))
    assert not stale.exists() and not stale_old.exists()
    assert live.exists() and other.exists()


def test_same_size_corruption_is_caught_by_md5(tmp_path: Path) -> None:
    out = tmp_path / "mnist"
    download("mnist", out, "synthetic", synthetic_sizes=(20, 10))
    path = out / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one pixel: the IDX parser cannot notice, the size stays the same
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte does not match its md5 in "
                       r"source\.json \(modified or corrupt\); run `dvc repro download@mnist`"):  # fmt: skip
        load_dataset("mnist", out)


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signalled_download_leaves_nothing(
    sig: str, code: int, mirror: Path, tmp_path: Path, params_file, monkeypatch, capsys
) -> None:
    """The download stage in-process, signalled mid-transfer: staging removed, one line."""
    import signal

    out = tmp_path / "ws" / "data" / "raw" / "mnist"
    with serve(mirror, TrickleHandler) as url:
        params = params_file({"data": {"source": url, "retries": 0, "timeout": 5}})
        argv = ["download.py", "--params", str(params), "--dataset", "mnist", "--out", str(out)]
        monkeypatch.setattr(sys, "argv", argv)
        staged = []

        def kill_once_staged() -> None:  # signal once the transfer is under way
            deadline = time.monotonic() + 20
            while not staged and time.monotonic() < deadline:
                staged.extend(out.parent.glob(".mnist.*.tmp/.archives/*.part"))
                time.sleep(0.01)
            os.kill(os.getpid(), getattr(signal, sig))

        killer = threading.Thread(target=kill_once_staged, daemon=True)
        killer.start()
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / "stages" / "download.py"), run_name="__main__")
        killer.join()
    assert staged, "the transfer never started"
    assert exit_info.value.code == code
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {'terminated' if code == 143 else 'interrupted'} ({sig})"]
    assert leftovers(tmp_path / "ws") == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_a_servers_long_reason_phrase_is_quoted_short(tmp_path: Path) -> None:
    class Shouting(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(503, "\x1b[31m" + "A" * 20000)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve(tmp_path, Shouting) as url, pytest.raises(DataError) as info:
        download("mnist", tmp_path / "ws" / "mnist", url, retries=0)
    message = str(info.value)
    assert "HTTP 503 \\x1b[31mAAA" in message and message.isprintable(), message
    assert len(message) < 600, len(message)


def test_previous_dataset_moved_aside_by_a_killed_download_is_restored(tmp_path: Path) -> None:
    """Killed between its two renames, a download left only `.mnist.<pid>.old`: put it back."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = tmp_path / "mnist"
    download("mnist", out, "synthetic", synthetic_sizes=(20, 10))
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    aside = tmp_path / f".mnist.{int(dead.stdout)}.old"
    out.rename(aside)
    assert data.remove_stale_staging(out) == []
    assert not aside.exists()
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ---- datasets by name: the table, Fashion-MNIST from the OS's copy -----------------------------

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def test_table_holds_torchvisions_files_sums_and_classes() -> None:
    tv = {
        "mnist": (torchvision.datasets.MNIST.resources, torchvision.datasets.MNIST.classes),
        "fashion-mnist": (
            torchvision.datasets.FashionMNIST.resources,
            torchvision.datasets.FashionMNIST.classes,
        ),
        "cifar10": (
            [(torchvision.datasets.CIFAR10.filename, torchvision.datasets.CIFAR10.tgz_md5)],
            synthetic.CIFAR10_CLASSES,
        ),
    }
    for name, (resources, classes) in tv.items():
        ds = DATASETS_BY_NAME[name]
        assert [(f.name, f.md5) for f in ds.files] == [tuple(r) for r in resources], name
        assert list(ds.classes) == list(classes), name
    assert DATASETS_BY_NAME["fashion-mnist"].bases == tuple(
        torchvision.datasets.FashionMNIST.mirrors
    )
    assert DATASETS_BY_NAME["mnist"].bases == tuple(torchvision.datasets.MNIST.mirrors)


def test_fashion_mnist_from_the_os_copy_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_fashion_mnist()
    unreachable = (f"http://127.0.0.1:{closed_port()}/",)  # never the network, even online
    fashion = dataclasses.replace(DATASETS_BY_NAME["fashion-mnist"], bases=unreachable)
    monkeypatch.setitem(DATASETS_BY_NAME, "fashion-mnist", fashion)
    out = tmp_path / "data/raw/fashion-mnist"
    monkeypatch.setattr(
        sys, "argv", ["download.py", "--dataset", "fashion-mnist", "--out", str(out)]
    )
    monkeypatch.chdir(REPO)  # params.yaml: data.source upstream
    runpy.run_path(str(REPO / "stages" / "download.py"), run_name="__main__")
    record = json.loads((out / "source.json").read_text())
    assert record["source"] == f"debian:{DEBIAN}"
    assert {d["checked_against"] for d in record["downloads"]} == {"upstream content md5"}
    data = load_dataset("fashion-mnist", out)
    assert data.source == f"debian:{DEBIAN}" and not data.synthetic
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape[0] == 10000
    assert data.train_images.dtype == torch.uint8 and data.test_labels.dtype == torch.int64
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10  # balanced, labels 0..9
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert 70 < data.train_images.float().mean() < 80  # real clothes: mean 72.9, not noise


def test_tampered_os_copy_is_refused_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_fashion_mnist()
    os_root = tmp_path / "usr-share-datasets"
    copy = Path(shutil.copytree(DEBIAN, os_root / "fashion-mnist"))
    labels = copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(labels.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one byte
    labels.write_bytes(bytes(raw))
    monkeypatch.setattr(datasets, "OS_DATASETS", os_root)
    unreachable = (f"http://127.0.0.1:{closed_port()}/",)
    fashion = dataclasses.replace(DATASETS_BY_NAME["fashion-mnist"], bases=unreachable)
    monkeypatch.setitem(DATASETS_BY_NAME, "fashion-mnist", fashion)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        download("fashion-mnist", tmp_path / "ws" / "fashion-mnist", "upstream", retries=0)
    message = str(info.value)
    assert "\n" not in message and time.perf_counter() - start < 10
    assert f"tried {labels} (md5 " in message and "does not match the upstream md5 " in message
    assert "nor its content the upstream content md5 15d48437" in message
    assert leftovers(tmp_path / "ws") == []


def test_fashion_mnist_synthetic_stand_in(tmp_path: Path) -> None:
    out = tmp_path / "fashion-mnist"
    download("fashion-mnist", out, "synthetic", synthetic_sizes=(50, 20))
    data = load_dataset("fashion-mnist", out)
    assert data.synthetic and data.classes[0] == "T-shirt/top"
    assert (out / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    mnist = synthetic.generate("mnist", 50, 0)[0]
    assert not np.array_equal(data.train_images.numpy(), mnist)  # its own stand-in, not MNIST's


# ---- the hint after a failed download: the next command for the workspace's state -------------


@pytest.mark.parametrize("where", [None, "config", "config.local"])
def test_dvc_pull_is_offered_only_with_a_remote(
    where: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "clone"
    (ws / ".dvc").mkdir(parents=True)
    (ws / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    (ws / "dvc.lock").write_text(
        "stages:\n  download@mnist:\n    outs:\n    - path: data/raw/mnist\n"
    )
    if where:
        remote = f"[core]\n    remote = team\n['remote \"team\"']\n    url = {tmp_path / 'store'}\n"
        (ws / ".dvc" / where).write_text(remote)
    (ws / "empty-mirror").mkdir()
    monkeypatch.chdir(ws)
    with pytest.raises(DataError) as info:
        download("mnist", ws / "data/raw/mnist", "empty-mirror", retries=0)
    message = str(info.value)
    assert "set data.source in params.yaml to upstream, another mirror or synthetic" in message
    assert ("get data/raw/mnist with `dvc pull`" in message) == bool(where), message


def test_offline_upstream_hint_names_synthetic_mirror_and_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "OS_DATASETS", tmp_path / "none")  # no OS copy
    unreachable = (f"http://127.0.0.1:{closed_port()}/",)
    for name in ("mnist", "fashion-mnist"):
        ds = dataclasses.replace(DATASETS_BY_NAME[name], bases=unreachable)
        monkeypatch.setitem(DATASETS_BY_NAME, name, ds)
    monkeypatch.chdir(tmp_path)  # a fresh clone without a remote: no `dvc pull`
    for name in ("mnist", "fashion-mnist"):
        with pytest.raises(DataError) as info:
            download(name, tmp_path / name, "upstream", retries=0)
        message = str(info.value)
        assert (
            "set data.source in params.yaml to synthetic (generated stand-ins) or a mirror"
            in message
        )
        assert "dvc pull" not in message
        assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion-mnist")


def test_the_verified_line_names_the_os_copy_not_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 36: the log said "from upstream verified" and then "from debian:..." for one copy."""
    os_root = tmp_path / "usr-share-datasets"
    synthetic.write_mnist(os_root / "mnist", 0, 40, 20)
    files = tuple(
        datasets.UpstreamFile(
            f.name, hashlib.md5((os_root / "mnist" / f.name).read_bytes()).hexdigest()
        )
        for f in DATASETS_BY_NAME["mnist"].files
    )
    unreachable = (f"http://127.0.0.1:{closed_port()}/",)
    mnist = dataclasses.replace(DATASETS_BY_NAME["mnist"], files=files, bases=unreachable)
    monkeypatch.setitem(DATASETS_BY_NAME, "mnist", mnist)
    monkeypatch.setattr(datasets, "OS_DATASETS", os_root)
    with caplog.at_level("INFO", logger="appliedtorch.data.download.fetch"):
        record = download("mnist", tmp_path / "ws" / "mnist", "upstream", retries=0)
    assert record["source"] == f"debian:{os_root / 'mnist'}"
    (line,) = [r.getMessage() for r in caplog.records if "verified against" in r.getMessage()]
    assert line.startswith(f"mnist: 4 file(s) from debian:{os_root / 'mnist'} verified"), line
