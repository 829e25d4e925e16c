"""Download + verify: where a dataset comes from and how it reaches data/raw/<name>.

    python stages/download.py --params params.yaml --dataset mnist --out data/raw/mnist

Sources (`data.source`): `upstream` (a verified copy in the OS's dataset directory if there is
one, such as Debian's /usr/share/datasets/fashion-mnist, else torchvision's URLs in order), a
mirror (a directory or an http(s):// base URL with the upstream file names, verified against its
`MD5SUMS` file when it has one, else against the upstream sums), or `synthetic` (generated, see
`appliedtorch.data.synthetic`). A file verifies by its md5 or by the md5 of what it decompresses
to. The files land in torchvision's on-disk layout, with `source.json` saying where they came
from (see `appliedtorch.data.loading`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

from torchvision.datasets.utils import calculate_md5

import appliedtorch.data.synthetic as synthetic
from appliedtorch.core.errors import DataError
from appliedtorch.core.utils import pid_alive, signals_held
from appliedtorch.data.datasets import Dataset, UpstreamFile, dataset
from appliedtorch.data.download.extract import BadArchive, TooLarge, extract, gunzip
from appliedtorch.data.download.hints import next_step
from appliedtorch.data.download.md5sums import parse_md5sums
from appliedtorch.data.download.transport import Fetched, FetchError, fetch_file, is_url
from appliedtorch.data.formats import read_dataset
from appliedtorch.data.limits import (
    MAX_BACKOFF_SECONDS,
    MAX_DOWNLOAD_BYTES,
    MAX_MD5SUMS_BYTES,
    MAX_MEMBER_BYTES,
    Limits,
    brief,
)
from appliedtorch.data.loading import MD5SUMS, SOURCE_FILE

log = logging.getLogger(__name__)


def download(
    name: str,
    out_dir: str | os.PathLike,
    source: str = "upstream",
    *,
    limits: Limits | None = None,
    synthetic_seed: int = 0,
    synthetic_sizes: tuple[int, int] | None = None,
    **limit_args: Any,
) -> dict[str, Any]:
    """Fetch (or generate) dataset `name` into `out_dir`, verified; return its source record.

    Everything is staged in a temporary directory beside `out_dir`, which replaces `out_dir`
    only once every file passed its checksum and the dataset loads; on any failure nothing is
    left behind and DataError says which file, which URL(s) and what to do. `limits` (or its
    fields as keywords: timeout, retries, file_timeout, ...) bound the transfers. Staging
    directories that a killed download left behind (their process is gone) are removed first.
    """
    ds = dataset(name)
    limits = limits or Limits(**limit_args)
    out = Path(out_dir)
    try:
        created = _make_parents(out.parent)
        remove_stale_staging(out)
        # Not tempfile.mkdtemp: its 0700 mode would stick to data/raw/<name> after the rename.
        staging = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        staging.mkdir()
    except OSError as exc:
        raise DataError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        if source == "synthetic":
            sizes = synthetic_sizes or ds.sizes
            synthetic.write_extracted(ds, staging, synthetic_seed, *sizes)
            origin: dict[str, Any] = {
                "synthetic": {"seed": synthetic_seed, "train": sizes[0], "test": sizes[1]}
            }
            label = source
        else:
            fetched = _fetch_all(ds, source, staging / ".archives", limits)
            extract(ds, staging, fetched, next_step(ds, source))
            shutil.rmtree(staging / ".archives")
            origin = {"downloads": [f.as_record() for f in fetched]}
            label = _source_label(ds, source, fetched)
            against = sorted({f.checked_against for f in fetched})
            log.info(
                "%s: %d file(s) from %s verified against %s", name, len(fetched), label, against
            )
        record = _source_record(ds, label, staging, origin)
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _replace_dir(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if still empty
        if isinstance(exc, OSError):  # e.g. the disk filled up
            raise DataError(f"cannot write {out}: {exc.strerror or exc}") from None
        raise
    return record


def _source_label(ds: Dataset, source: str, fetched: list[Fetched]) -> str:
    """source.json's `source` (the run's data.source tag): the OS copy's place when every file
    came from it, else the params' source."""
    local = str(ds.os_dir)
    if source == "upstream" and all(f.url.startswith(local + os.sep) for f in fetched):
        return f"debian:{local}"
    return source


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove `.<name>.<pid>.*.tmp` / `.<name>.<pid>.old` beside `out` whose process is gone
    (a download killed by SIGKILL or a power cut); return what was removed."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(\d+)\.(?:[0-9a-f]+\.tmp|old)")
    removed = []
    with contextlib.suppress(OSError):
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if not m or int(m[1]) == os.getpid() or pid_alive(int(m[1])):
                continue
            if p.name.endswith(".old") and not out.exists():
                # Killed between moving the old dataset aside and the new one in: put it back.
                os.replace(p, out)
                log.info("restored %s from %s, left by a download that was killed", out, p)
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            log.info("removed %s, left by a download that was killed (pid %s)", p, m[1])
            removed.append(p)
    return removed


def _source_record(
    ds: Dataset, source: str, staging: Path, origin: dict[str, Any]
) -> dict[str, Any]:
    """The dataset's source record, once the staged files load: where they came from (`origin`),
    sample counts, and every file's md5 and size."""
    try:
        data = read_dataset(ds, staging)
    except DataError as exc:
        # Name the file as it is in the archive, not by the staging path (gone by now).
        why = str(exc).replace(f"{staging}{os.sep}", "").replace(str(staging), ".")
        raise DataError(
            f"{ds.name} from {brief(source, 80)} is not a valid dataset: {why}"
        ) from None
    for split in ("train", "test"):
        if len(data[f"{split}_labels"]) == 0:
            raise DataError(
                f"{ds.name} from {brief(source, 80)} is not a valid dataset: its {split} split "
                "holds 0 images"
            )
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {
        "dataset": ds.name,
        "source": source,
        **origin,
        "train": len(data["train_labels"]),
        "test": len(data["test_labels"]),
        "files": {
            p.relative_to(staging).as_posix(): {"md5": calculate_md5(p), "bytes": p.stat().st_size}
            for p in files
        },
    }


def _make_parents(path: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (outermost first) for cleanup."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _replace_dir(new: Path, out: Path) -> None:
    """Rename `new` onto `out`; an existing `out` is moved aside first and removed after.

    SIGINT/SIGTERM are held back during the two renames, so a signal cannot leave `out`
    missing with the previous dataset only under its `.old` name.
    """
    old = None
    with signals_held():
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, old)
        try:
            os.replace(new, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fetch_all(ds: Dataset, source: str, dest: Path, limits: Limits) -> list[Fetched]:
    """Every file of the dataset from `source` into `dest`, each verified."""
    dest.mkdir(parents=True)
    if source == "upstream":
        # The OS's copy first: verified by content like any other, and no network needed.
        local = [str(ds.os_dir)] if ds.os_dir.is_dir() else []
        bases, sums = [*local, *ds.bases], {}
    else:
        bases = [_mirror_base(source)]
        sums = _read_md5sums(bases[0], dest, limits, ds, source)
    fetched = []
    for upstream_file in ds.files:
        tried = []
        for base in bases:
            url = _join(base, upstream_file.name)
            try:
                fetched.append(_fetch_verified(url, dest, upstream_file, sums, limits, ds))
                break
            except FetchError as exc:
                tried.append(f"{brief(url, 200)} ({exc})")
        else:
            raise DataError(
                f"cannot get {upstream_file.name} for {ds.name}: tried {'; '.join(tried)}; "
                f"{next_step(ds, source)}"
            )
    return fetched


def _mirror_base(source: str) -> str:
    """An http(s) base URL, or an existing directory as a path string."""
    if is_url(source):
        if "@" in source.split("/")[2]:
            # urllib would take `user:pw@host` for a host name, and the URL is written to
            # source.json, which DVC shares with the team.
            raise DataError(
                f"data.source '{brief(source, 80)}' holds credentials (user:password@): they "
                "would be written to source.json; serve the mirror without them, or mount it "
                "and give the directory"
            )
        return source if source.endswith("/") else source + "/"
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data.source '{brief(source, 80)}' is not upstream, synthetic, an http(s):// URL or "
            "an existing directory; set data.source in params.yaml"
        )
    return str(path.resolve())


def _join(base: str, fname: str) -> str:
    return base + fname if is_url(base) else str(Path(base) / fname)


def _read_md5sums(
    base: str, dest: Path, limits: Limits, ds: Dataset, source: str
) -> dict[str, str]:
    """The mirror's MD5SUMS (`<md5>  <file>` lines) as {file: md5}; {} when it has none."""
    url = _join(base, MD5SUMS)
    tmp = dest / MD5SUMS
    try:
        fetch_with_retries(url, tmp, limits, MAX_MD5SUMS_BYTES, quiet=True)
    except FetchError as exc:
        if exc.missing:
            log.info("%s has no %s: verifying against the upstream md5 sums", source, MD5SUMS)
            return {}
        raise DataError(
            f"cannot read {brief(url, 200)} for {ds.name} ({exc}); {next_step(ds, source)}"
        ) from None
    sums = parse_md5sums(tmp.read_text(errors="replace"), brief(url, 200))
    tmp.unlink()
    return sums


def _verify(part: Path, want: UpstreamFile, sums: dict[str, str], ds: Dataset) -> tuple[str, str]:
    """(md5, what it was checked against) of a fetched file; FetchError if it matches nothing.

    Against upstream, a file also verifies by the md5 of its decompressed content where the
    table knows it: a recompressed copy (Debian's) holds the same bytes in another .gz.
    """
    got = calculate_md5(part)
    if want.name in sums:
        if got == sums[want.name]:
            return got, "MD5SUMS"
        expected = f"MD5SUMS {sums[want.name]}"
    elif got == want.md5:
        return got, "upstream md5"
    elif want.content_md5 and _content_md5(part, ds) == want.content_md5:
        return got, "upstream content md5"
    else:
        expected = f"upstream md5 {want.md5}"
        if want.content_md5:
            expected += f" (nor its content the upstream content md5 {want.content_md5})"
    raise FetchError(
        f"md5 {got} of {part.stat().st_size} bytes does not match the {expected}: "
        "corrupt or truncated",
        permanent=True,
    )


def _content_md5(part: Path, ds: Dataset) -> str | None:
    """md5 of what a .gz decompresses to (within the dataset's bound); None if it is not one."""
    try:
        return gunzip(part, None, MAX_MEMBER_BYTES[ds.format])
    except (TooLarge, BadArchive, OSError, EOFError, zlib.error):
        return None


def _fetch_verified(
    url: str, dest: Path, want: UpstreamFile, sums: dict[str, str], limits: Limits, ds: Dataset
) -> Fetched:
    """Fetch to a temporary name; rename into `dest` only once it verifies."""
    part = dest / (want.name + ".part")
    try:
        fetch_with_retries(url, part, limits, MAX_DOWNLOAD_BYTES[ds.format])
        md5, against = _verify(part, want, sums, ds)
        os.replace(part, dest / want.name)
    finally:
        part.unlink(missing_ok=True)
    return Fetched(want.name, dest / want.name, url, md5, against)


def fetch_with_retries(
    url: str, dest: Path, limits: Limits, max_bytes: int, quiet: bool = False
) -> None:
    """fetch_file once, and again up to `retries` times after transient errors, backing off 2x
    (each wait capped at MAX_BACKOFF_SECONDS)."""
    for attempt in range(limits.retries + 1):
        try:
            fetch_file(url, dest, limits, max_bytes, quiet)
            return
        except FetchError as exc:
            if exc.permanent or attempt == limits.retries:
                raise
            delay = min(limits.backoff * 2**attempt, MAX_BACKOFF_SECONDS)
            log.warning(
                "%s: %s; retry %d/%d in %.1f s", url, exc, attempt + 1, limits.retries, delay
            )
            time.sleep(delay)
