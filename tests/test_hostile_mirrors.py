"""Hostile mirrors: files that are not what upstream serves, FIFOs, /proc files, trickles.

Each case builds its mirror here (with a matching MD5SUMS where a checksum would otherwise stop
it first), runs stages/download.py in this process against it, and requires one `error:` line,
exit code 1, a few seconds at most, and the earlier data/raw/<dataset> byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml

from appliedtorch.data import synthetic
from appliedtorch.data.datasets import DATASETS_BY_NAME
from appliedtorch.data.download import transport
from appliedtorch.data.download.fetch import download
from appliedtorch.data.limits import Limits
from helpers import REPO, merge
from helpers.stage_runs import one_error_line, run_stage_here

SIZES = {"mnist": (40, 20), "cifar10": (20, 10)}
MNIST = DATASETS_BY_NAME["mnist"]
BOUND_SECONDS = 10  # every case must fail well within this


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace with params.yaml (no retries) and an earlier good data/raw/{mnist,cifar10}."""
    params = merge(
        yaml.safe_load((REPO / "params.yaml").read_text()),
        {"data": {"retries": 0, "timeout": 2.0}},
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, sizes in SIZES.items():
        download(name, tmp_path / "data/raw" / name, "synthetic", synthetic_sizes=sizes)
    (tmp_path / "mirror").mkdir()
    monkeypatch.chdir(tmp_path)
    for var in ("no_proxy", "NO_PROXY"):  # an http_proxy must not swallow 127.0.0.1
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def fails_fast(ws: Path, dataset: str, source: str, monkeypatch, capsys, **data: object) -> str:
    """Run the download stage against `source`; return its one error line after checking the
    exit code, the time and that data/raw is untouched."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params = merge(params, {"data": {"source": source, **data}})
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = snapshot(ws / "data")
    start = time.perf_counter()
    code, err = run_stage_here(
        "download", ["--dataset", dataset, "--out", f"data/raw/{dataset}"], monkeypatch, capsys
    )
    elapsed = time.perf_counter() - start
    line = one_error_line(err)
    assert code == 1, (code, err)
    assert elapsed < BOUND_SECONDS, elapsed
    assert snapshot(ws / "data") == before  # nothing replaced, half-written or left behind
    print(f"{elapsed:.2f} s: {line}")  # the time to fail, for the closing note
    return line


def write_md5sums(mirror: Path) -> None:
    files = sorted(p for p in mirror.iterdir() if p.is_file() and p.name != "MD5SUMS")
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files]
    (mirror / "MD5SUMS").write_text("".join(lines))


# ---- CIFAR-10 batches that are not upstream's ---------------------------------------------------


def cifar_mirror(
    mirror: Path, change: Callable[[dict], object], member: str = "test_batch"
) -> None:
    """A CIFAR-10 mirror whose `member` is what `change` makes of its dict, pickled again."""
    files = synthetic.cifar10_files(0, *SIZES["cifar10"])
    files[member] = pickle.dumps(change(pickle.loads(files[member], encoding="latin1")), protocol=2)
    with tarfile.open(mirror / synthetic.CIFAR10_ARCHIVE, "w:gz") as tar:
        for fname, content in files.items():
            info = tarfile.TarInfo(f"{synthetic.CIFAR10_FOLDER}/{fname}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    write_md5sums(mirror)


def shared_references(batch: dict) -> dict:
    """labels: 1,000 references to a list of 1,000 references ... four levels deep (10^12
    labels once expanded; a few KB pickled, as each inner list is pickled once)."""
    labels: list = [1] * 1000
    for _ in range(3):
        labels = [labels] * 1000
    return {**batch, "labels": labels}


CIFAR_CASES = {
    # case: (the batch as the mirror serves it, key words of the error line)
    "shared-reference-bomb": (
        shared_references,
        r"test_batch is not a CIFAR-10 batch: .*shared list",
    ),
    "wrong-dtype": (
        lambda b: {**b, "data": b["data"].astype(np.int16)},
        r"'data' must be a uint8 array of \(N, 3072\) \(got int16 \(10, 3072\)\)",
    ),
    "wrong-shape": (lambda b: {**b, "data": b["data"][:, :3000].copy()}, r"shape \(10, 3000\)"),
    "label-10": (
        lambda b: {**b, "labels": [10, *b["labels"][1:]]},
        r"test_batch: label 10 outside 0\.\.9",
    ),
    "negative-label": (
        lambda b: {**b, "labels": [*b["labels"][:3], -1, *b["labels"][4:]]},
        r"label -1 outside 0\.\.9",
    ),
    "float-labels": (
        lambda b: {**b, "labels": [float(y) for y in b["labels"]]},
        r"'labels' holds a float, not only ints",
    ),
    "labels-as-array": (
        lambda b: {**b, "labels": np.array(b["labels"])},
        r"'labels' must be a list of 10 ints \(got ndarray\)",
    ),
    "one-label-short": (
        lambda b: {**b, "labels": b["labels"][:-1]},
        r"'labels' must be a list of 10 ints \(got 9\)",
    ),
    "extra-key": (
        lambda b: {**b, "coarse_labels": list(b["labels"])},
        r"extra key 'coarse_labels'",
    ),
    "missing-key": (
        lambda b: {k: v for k, v in b.items() if k != "filenames"},
        r"no key 'filenames'",
    ),
    "not-a-dict": (lambda b: [b], r"a list, not a dict"),
}


@pytest.mark.parametrize("case", CIFAR_CASES)
def test_cifar10_batch_not_upstreams_schema(case: str, ws: Path, monkeypatch, capsys) -> None:
    change, expected = CIFAR_CASES[case]
    cifar_mirror(ws / "mirror", change)
    line = fails_fast(ws, "cifar10", "mirror", monkeypatch, capsys)
    assert line.startswith("error: cifar10 from mirror is not a valid dataset: "), line
    assert re.search(expected, line), line


def test_meta_with_nine_class_names_is_refused(ws: Path, monkeypatch, capsys) -> None:
    nine = lambda m: {**m, "label_names": m["label_names"][:9]}  # noqa: E731
    cifar_mirror(ws / "mirror", nine, member="batches.meta")
    line = fails_fast(ws, "cifar10", "mirror", monkeypatch, capsys)
    assert "batches.meta: 'label_names' must be a list of 10 strs (got 9)" in line, line


# ---- MNIST IDX files that are not upstream's ----------------------------------------------------


def idx_mirror(mirror: Path, name: str, change: Callable[[bytes], bytes]) -> None:
    """An MNIST mirror whose decompressed `name` is `change`d, recompressed, with MD5SUMS."""
    for fname, raw in synthetic.mnist_files(0, *SIZES["mnist"]).items():
        content = change(raw) if fname == name else raw
        (mirror / f"{fname}.gz").write_bytes(gzip.compress(content, mtime=0))
    write_md5sums(mirror)


TRAIN_LABELS, TRAIN_IMAGES = "train-labels-idx1-ubyte", "train-images-idx3-ubyte"
IDX_CASES = {
    # case: (file, change to its decompressed bytes, key words of the error line)
    "label-10": (TRAIN_LABELS, lambda b: b[:8] + b"\x0a" + b[9:], r"label 10 outside 0\.\.9"),
    "count-mismatch": (
        TRAIN_LABELS,
        lambda b: b[:4] + (39).to_bytes(4, "big") + b[8:-1],
        r"train has 40 images and 39 labels",
    ),
    "header-promises-more": (
        TRAIN_IMAGES,
        lambda b: b[:4] + (60000).to_bytes(4, "big") + b[8:],
        r"train-images-idx3-ubyte: \d+ bytes, its header \(60000, 28, 28\) says 47040016",
    ),
    "too-many-items": (
        TRAIN_LABELS,
        lambda b: b[:4] + (2**31).to_bytes(4, "big") + b[8:],
        r"2147483648 items, more than 120000: refused",
    ),
    "float-dtype": (
        TRAIN_IMAGES,
        lambda b: b[:2] + b"\x0d" + b[3:],
        r"bad IDX header 00000d03 \(an unsigned-byte file of 3 dimension\(s\) starts 00000803\)",
    ),
    "wrong-image-size": (
        TRAIN_IMAGES,
        lambda b: (
            b[:8]
            + (32).to_bytes(4, "big")
            + (32).to_bytes(4, "big")
            + b[16:]
            + b"\0" * (40 * (1024 - 784))
        ),
        r"images of \(32, 32\), not \(28, 28\)",
    ),
}


@pytest.mark.parametrize("case", IDX_CASES)
def test_mnist_idx_not_upstreams_schema(case: str, ws: Path, monkeypatch, capsys) -> None:
    fname, change, expected = IDX_CASES[case]
    idx_mirror(ws / "mirror", fname, change)
    line = fails_fast(ws, "mnist", "mirror", monkeypatch, capsys)
    assert line.startswith("error: mnist from mirror is not a valid dataset: "), line
    assert re.search(expected, line), line


# ---- files that are not regular files -----------------------------------------------------------


def good_mnist_mirror(mirror: Path) -> None:
    synthetic.write_mnist(mirror, 0, *SIZES["mnist"])
    write_md5sums(mirror)


def replace_with(path: Path, kind: str) -> contextlib.AbstractContextManager:
    """Put a FIFO, a /proc symlink, a /dev symlink or a socket where `path` was."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "proc":
        path.symlink_to("/proc/self/environ")  # regular file, reported size 0
    elif kind == "proc-big":
        path.symlink_to("/proc/self/pagemap")  # gigabytes if read to its end
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return contextlib.closing(sock)
    return contextlib.nullcontext()


SPECIAL = {
    # case: (file replaced, kind, key words of the error line)
    "fifo-md5sums": (
        "MD5SUMS",
        "fifo",
        r"cannot read \S+/MD5SUMS for mnist \(not a regular file\)",
    ),
    "fifo-data-file": (
        "train-images-idx3-ubyte.gz",
        "fifo",
        r"idx3-ubyte\.gz \(not a regular file\)",
    ),
    "proc-md5sums": ("MD5SUMS", "proc", r"MD5SUMS for mnist \(not a regular file\)"),
    "proc-data-file": (
        "train-labels-idx1-ubyte.gz",
        "proc-big",
        r"idx1-ubyte\.gz \(not a regular file\)",
    ),
    "socket-data-file": ("t10k-images-idx3-ubyte.gz", "socket", r"idx3-ubyte\.gz \(No such device"),
}


@pytest.mark.parametrize("case", SPECIAL)
def test_directory_mirror_opens_only_regular_files(
    case: str, ws: Path, monkeypatch, capsys
) -> None:
    fname, kind, expected = SPECIAL[case]
    good_mnist_mirror(ws / "mirror")
    with replace_with(ws / "mirror" / fname, kind):
        line = fails_fast(ws, "mnist", "mirror", monkeypatch, capsys)
    assert re.search(expected, line), line


# ---- servers too slow to wait for ---------------------------------------------------------------


class Paced(http.server.SimpleHTTPRequestHandler):
    """Serves the directory, `piece` bytes every `every` seconds."""

    piece, every = 1024, 0.05

    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError):
            while chunk := source.read(self.piece):
                outputfile.write(chunk)
                outputfile.flush()
                time.sleep(self.every)


class Trickle(Paced):
    piece, every = 20, 0.1  # 200 bytes/s


@contextlib.contextmanager
def serve(directory: Path, handler: type) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(directory))
    )
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_trickle_is_stopped_by_the_low_speed_limit(ws: Path, monkeypatch, capsys) -> None:
    good_mnist_mirror(ws / "mirror")
    with serve(ws / "mirror", Trickle) as url:
        line = fails_fast(
            ws, "mnist", url, monkeypatch, capsys, low_speed_limit=1000.0, low_speed_time=1.0
        )
    assert "slower than 1000 bytes/s for 1 s (data.low_speed_limit, data.low_speed_time)" in line


def test_a_slow_but_steady_server_is_not_stopped(ws: Path) -> None:
    """~20 KB/s against a limit of 1000 bytes/s over 1 s: the same watchdog lets it finish."""
    good_mnist_mirror(ws / "mirror")
    limits = Limits(retries=0, low_speed_limit=1000.0, low_speed_time=1.0)
    start = time.perf_counter()
    with serve(ws / "mirror", Paced) as url:
        record = download("mnist", ws / "slow" / "mnist", url, limits=limits)
    assert [d["url"] for d in record["downloads"]] == [url + f.name for f in MNIST.files]
    assert time.perf_counter() - start > 1.0  # slow indeed: longer than the speed window


# ---- the same bounds for a directory mirror's copy ------------------------------------------------


def test_directory_copy_stops_at_the_deadline(tmp_path: Path) -> None:
    """A mirror on a stalled network filesystem: the copy obeys data.file_timeout too."""
    src = tmp_path / "big"
    src.write_bytes(b"\0" * (3 << 20))
    with transport.Watchdog(Limits(file_timeout=0.05)) as dog:
        time.sleep(0.5)  # as if the first read had taken this long
        with pytest.raises(transport.FetchError, match=r"not complete within 0\.05 s"):
            transport.copy_local(str(src), tmp_path / "copy", 10 << 20, dog)


def test_directory_copy_caps_the_bytes_read_not_the_reported_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that reports 0 bytes (as /proc files do) is still cut off at the cap."""
    src = tmp_path / "liar"
    src.write_bytes(b"\0" * (3 << 20))
    real_fstat = os.fstat

    def zero_size(fd: int) -> os.stat_result:
        st = list(real_fstat(fd))
        st[6] = 0  # st_size
        return os.stat_result(st)

    monkeypatch.setattr(transport.os, "fstat", zero_size)
    with (
        transport.Watchdog(Limits()) as dog,
        pytest.raises(
            transport.FetchError, match=r"more than 1 MB, the most this file can hold: refused"
        ),
    ):
        transport.copy_local(str(src), tmp_path / "copy", 1 << 20, dog)
    assert (tmp_path / "copy").stat().st_size <= 1 << 20


def test_malformed_ipv6_source_is_one_line(ws: Path, monkeypatch, capsys) -> None:
    line = fails_fast(ws, "mnist", "http://[::1/", monkeypatch, capsys)
    assert "cannot read http://[::1/MD5SUMS for mnist (malformed URL (Invalid IPv6 URL))" in line


class RedirectToMalformed(http.server.SimpleHTTPRequestHandler):
    """Answers every request with a redirect to a URL urllib cannot parse."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "http://[::1/MD5SUMS")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_redirect_to_a_malformed_url_is_one_line(ws: Path, monkeypatch, capsys) -> None:
    """urllib follows the redirect and raises ValueError, which is no URLError or OSError."""
    with serve(ws / "mirror", RedirectToMalformed) as url:
        line = fails_fast(ws, "mnist", url, monkeypatch, capsys)
    assert "/MD5SUMS for mnist (malformed URL (Invalid IPv6 URL))" in line, line


# ---- everything a mirror says is input (issue 37) ------------------------------------------------


NAME_CASES = {
    # case: (batches.meta's label_names, key words of the error line)
    "5000-character-names": (
        [c * 5000 for c in "abcdefghij"],
        r"class name 'a+' has 5000 characters, not 1 to 64",
    ),
    "markup": (
        ["</script><script>alert(1)</script>", *synthetic.CIFAR10_CLASSES[1:]],
        r"class name '</script>.*' holds a markup character",
    ),
    "all-the-same": (["cat"] * 10, r"class name 'cat' appears twice"),
    "newline": (["air\nplane", *synthetic.CIFAR10_CLASSES[1:]], r"unprintable character"),
    "empty": (["", *synthetic.CIFAR10_CLASSES[1:]], r"class name '' has 0 characters"),
}


@pytest.mark.parametrize("case", NAME_CASES)
def test_class_names_from_a_mirror_follow_predicts_rule(
    case: str, ws: Path, monkeypatch, capsys
) -> None:
    names, expected = NAME_CASES[case]
    cifar_mirror(ws / "mirror", lambda m: {**m, "label_names": names}, member="batches.meta")
    line = fails_fast(ws, "cifar10", "mirror", monkeypatch, capsys)
    assert "batches.meta: 'label_names': " in line, line
    assert re.search(expected, line), line
    assert len(line) < 400, line  # the 5000-character name is not repeated whole


def many_members_tarball(path: Path, members: int) -> None:
    """A cifar-10-python.tar.gz of `members` empty files (a few hundred KB compressed)."""
    header = tarfile.TarInfo(f"{synthetic.CIFAR10_FOLDER}/empty").tobuf(format=tarfile.GNU_FORMAT)
    with gzip.open(path, "wb", compresslevel=1) as gz:
        for _ in range(members // 1000):
            gz.write(header * 1000)
        gz.write(b"\0" * 1024)  # the end-of-archive marker


def test_an_archive_of_many_empty_members_is_refused_by_count(ws, monkeypatch, capsys) -> None:
    many_members_tarball(ws / "mirror" / synthetic.CIFAR10_ARCHIVE, 100_000)
    write_md5sums(ws / "mirror")
    line = fails_fast(ws, "cifar10", "mirror", monkeypatch, capsys)
    assert re.search(r"cifar-10-python\.tar\.gz from \S+: holds more than 64 members", line), line


def redirecting_to(location: str) -> type:
    """A handler that answers every request with a redirect to `location` (`{path}`: its own)."""

    class Redirect(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location.format(path=self.path))
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Redirect


REDIRECTS = {
    # case: (Location, key words of the error line)
    "ftp": (
        "ftp://127.0.0.1:9/MD5SUMS",
        r"redirected to ftp://127\.0\.0\.1:9/MD5SUMS: only http://",
    ),
    "file": ("file:///etc/passwd", r"redirected to file:///etc/passwd: only http:// and https://"),
    "loop": ("{path}", r"\(redirects in a loop or more than 10 times \(HTTP 302\)\)"),
}


@pytest.mark.parametrize("case", REDIRECTS)
def test_a_redirect_off_http_or_in_a_loop_is_one_line(case, ws, monkeypatch, capsys) -> None:
    """urllib alone follows ftp:// (outside the deadlines, ending in AttributeError)."""
    location, expected = REDIRECTS[case]
    with serve(ws / "mirror", redirecting_to(location)) as url:
        line = fails_fast(ws, "mnist", url, monkeypatch, capsys)
    assert re.search(expected, line), line


def empty_split(raw: bytes) -> bytes:
    """An IDX file with no items: its count set to 0 and its data dropped."""
    ndim = raw[3]
    return raw[:4] + (0).to_bytes(4, "big") + raw[8 : 4 + 4 * ndim]


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_a_split_of_no_images_is_refused_at_download(split, ws, monkeypatch, capsys) -> None:
    for fname, raw in synthetic.mnist_files(0, *SIZES["mnist"]).items():
        content = empty_split(raw) if fname.startswith(split) else raw
        (ws / "mirror" / f"{fname}.gz").write_bytes(gzip.compress(content, mtime=0))
    write_md5sums(ws / "mirror")
    line = fails_fast(ws, "mnist", "mirror", monkeypatch, capsys)
    which = "train" if split == "train" else "test"
    assert re.search(rf"not a valid dataset: its {which} split holds 0 images", line), line


def test_bytes_appended_to_a_gzip_file_are_named(ws: Path, monkeypatch, capsys) -> None:
    good_mnist_mirror(ws / "mirror")
    labels = ws / "mirror" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes() + b"garbage!")
    write_md5sums(ws / "mirror")
    line = fails_fast(ws, "mnist", "mirror", monkeypatch, capsys)
    assert "train-labels-idx1-ubyte.gz from" in line, line
    assert "has 8 bytes after the end of its gzip stream" in line, line
    assert "inflates" not in line, line


def test_md5sums_written_on_windows_is_read(ws: Path) -> None:
    """A byte-order mark and CRLF line ends: the sums are used, not refused or ignored."""
    good_mnist_mirror(ws / "mirror")
    sums = ws / "mirror" / "MD5SUMS"
    sums.write_bytes(b"\xef\xbb\xbf" + sums.read_bytes().replace(b"\n", b"\r\n"))
    record = download("mnist", ws / "win" / "mnist", str(ws / "mirror"), retries=0)
    assert {d["checked_against"] for d in record["downloads"]} == {"MD5SUMS"}


def test_a_malformed_md5sums_line_says_what_the_format_is(ws, monkeypatch, capsys) -> None:
    good_mnist_mirror(ws / "mirror")
    (ws / "mirror" / "MD5SUMS").write_text("not-a-sum  train-images-idx3-ubyte.gz\r\n")
    line = fails_fast(ws, "mnist", "mirror", monkeypatch, capsys)
    assert re.search(r"MD5SUMS line 1 is not in md5sum format \(32 hex digits", line), line


class NotHttp(http.server.SimpleHTTPRequestHandler):
    """A server on the mirror's port that is not an HTTP server (an SSH banner)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")


def test_a_server_that_is_not_http_is_named_so(ws: Path, monkeypatch, capsys) -> None:
    """Not http.client's BadStatusLine, whose text is only the line the server sent."""
    with serve(ws / "mirror", NotHttp) as url:
        line = fails_fast(ws, "mnist", url, monkeypatch, capsys)
    assert "(not an HTTP answer (it starts 'SSH-2.0-OpenSSH_9.6'))" in line, line


def test_a_mirror_url_with_credentials_is_refused_without_showing_them(ws, monkeypatch, capsys):
    """urllib took `alice:s3cret@127.0.0.1` for a host name ("host not found"), and a URL that
    worked would have been written to source.json, which DVC shares."""
    line = fails_fast(ws, "mnist", "http://alice:s3cret@127.0.0.1:1/", monkeypatch, capsys)
    assert "holds credentials (user:password@)" in line and "s3cret" not in line, line
