"""Moving one file from a source into the staging area: over http(s), or from a directory.

    >>> fetch_file("https://host/mnist/train-images-idx3-ubyte.gz", Path("x.gz"), Limits(), 95_000_000)

Both transports stop at the same bounds: `max_bytes` actually transferred (not what a header or
`stat` reports), the whole-file deadline, and the low-speed limit (curl's --speed-limit and
--speed-time). A directory mirror's file is opened only if it is a regular file outside /proc,
/sys and /dev, without ever blocking on a FIFO.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import http.client
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from torchvision.datasets.utils import USER_AGENT
from tqdm import tqdm

from appliedtorch.data.limits import CHUNK, Limits, brief, mb


@dataclass
class Fetched:
    """One verified file of the source, in the staging area."""

    name: str
    path: Path
    url: str
    md5: str
    checked_against: str  # "MD5SUMS", "upstream md5" or "upstream content md5"

    def as_record(self) -> dict[str, str]:
        """Its entry in source.json's `downloads`."""
        return {
            "file": self.name,
            "url": self.url,
            "md5": self.md5,
            "checked_against": self.checked_against,
        }


class FetchError(Exception):
    """One attempt at one URL failed; `permanent` ones are not retried; `missing`: no such file."""

    def __init__(self, reason: str, permanent: bool = False, missing: bool = False):
        super().__init__(reason)
        self.permanent = permanent or missing
        self.missing = missing


def is_url(source: str) -> bool:
    """True for an http(s):// address, False for a path."""
    return source.startswith(("http://", "https://"))


class Watchdog:
    """Watches one transfer: past `file_timeout`, or slower than `low_speed_limit` bytes/s over
    `low_speed_time` seconds, it marks the transfer `expired` and shuts its sockets down (a
    socket's `timeout` bounds each wait, not a server that sends a byte now and then)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.expired: str | None = None  # why, once expired
        self.done = 0  # bytes transferred so far
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def progress(self, n: int) -> None:
        """Count `n` more bytes; FetchError if the transfer has expired."""
        self.done += n
        if self.expired:
            raise self.error()

    def error(self) -> FetchError:
        # Not retried: a server this slow would only make the user wait (retries + 1) times longer.
        return FetchError(f"{self.expired}; {self.done} bytes received", permanent=True)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def _watch(self) -> None:
        lim = self.limits
        start = time.monotonic()
        window = max(lim.low_speed_time, 1e-3)
        samples: collections.deque[tuple[float, int]] = collections.deque([(start, 0)])
        while not self._stop.wait(min(0.25, window / 4)):
            now = time.monotonic()
            samples.append((now, self.done))
            while len(samples) > 1 and samples[1][0] <= now - window:
                samples.popleft()  # keep the newest sample at least `window` old
            if now - start >= lim.file_timeout:
                why = f"not complete within {lim.file_timeout:g} s (data.file_timeout)"
            elif (
                now - samples[0][0] >= window
                and self.done - samples[0][1] < lim.low_speed_limit * window
            ):
                why = (
                    f"slower than {lim.low_speed_limit:g} bytes/s for {lim.low_speed_time:g} s "
                    "(data.low_speed_limit, data.low_speed_time)"
                )
            else:
                continue
            self._expire(why)
            return

    def _expire(self, why: str) -> None:
        with self._lock:
            self.expired = why
            for sock in self._sockets:
                _shutdown(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener whose every connection (redirects too) this watchdog watches."""
        dog = self

        def watched(base: type[http.client.HTTPConnection]) -> type:
            class Watched(base):  # type: ignore[valid-type, misc]
                def connect(self) -> None:
                    super().connect()
                    dog.watch(self.sock)

            return Watched

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> Any:
                return self.do_open(watched(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> Any:
                kwargs = {"context": self._context}
                if hasattr(self, "_check_hostname"):  # Python < 3.12
                    kwargs["check_hostname"] = self._check_hostname
                return self.do_open(watched(http.client.HTTPSConnection), req, **kwargs)

        return urllib.request.build_opener(HTTP, HTTPS, HttpOnlyRedirects)


class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to http(s), its host looked up within the same timeout: urllib
    alone would follow ftp:// too, outside the watchdog (and end in an AttributeError)."""

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        # urllib refuses file:// itself, but in words cut short in a line; check first.
        location = headers.get("location") or headers.get("uri")
        if location:
            self.check(urllib.parse.urljoin(req.full_url, location))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        self.check(newurl)
        resolve(newurl, req.timeout or 30.0)
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    @staticmethod
    def check(newurl: str) -> None:
        """FetchError unless `newurl` is an http(s) URL."""
        try:
            scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        except ValueError as exc:
            raise FetchError(f"malformed URL ({brief(exc, 60)})", permanent=True) from None
        if scheme not in ("http", "https"):
            raise FetchError(
                f"redirected to {brief(newurl, 80)}: only http:// and https:// redirects are "
                "followed",
                permanent=True,
            )


def _shutdown(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for an SSLSocket: wakes a thread blocked in recv().
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def fetch_file(url: str, dest: Path, limits: Limits, max_bytes: int, quiet: bool = False) -> None:
    """One attempt: copy a directory mirror's file, or stream a URL (progress bar on a terminal)."""
    with Watchdog(limits) as dog:
        if is_url(url):
            _fetch_http(url, dest, limits.timeout, max_bytes, dog, quiet)
        else:
            copy_local(url, dest, max_bytes, dog)


def _fetch_http(
    url: str, dest: Path, timeout: float, max_bytes: int, dog: Watchdog, quiet: bool
) -> None:
    # torchvision's download_url has no timeout (urlopen would wait forever on a stalled
    # server), no retries, and writes straight to the final name; hence this small loop.
    resolve(url, timeout)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    too_big = f"larger than {mb(max_bytes)}, the most this file can hold: refused"
    total = None
    try:
        with dog.opener().open(request, timeout=timeout) as response:
            total = response.length
            if total is not None and total > max_bytes:
                raise FetchError(f"{total} bytes announced, {too_big}", permanent=True)
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=Path(url).name,
                disable=True if quiet else None,
            )
            with open(dest, "wb") as fh, bar:
                while chunk := response.read1(CHUNK):  # read1: what has arrived, not a full MB
                    dog.progress(len(chunk))
                    if dog.done > max_bytes:
                        raise FetchError(too_big, permanent=True)
                    fh.write(chunk)
                    bar.update(len(chunk))
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise http_error(exc) from None
    except ValueError as exc:  # a redirect to a malformed URL, e.g. http://[::1/x
        raise FetchError(f"malformed URL ({brief(exc, 60)})", permanent=True) from None
    except http.client.BadStatusLine as exc:  # its text is the line itself: say what it is
        line = brief(str(exc.args[0] if exc.args else "").strip(), 40)
        raise FetchError(f"not an HTTP answer (it starts {line!r})", permanent=True) from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:  # also timeouts, resets
        if dog.expired:
            raise dog.error() from None
        raise network_error(getattr(exc, "reason", exc), timeout) from None
    if dog.expired and (total is None or dog.done < total):  # a shutdown reads as a clean end
        raise dog.error()
    if total is not None and dog.done < total:
        raise FetchError(f"connection closed after {dog.done} of {total} bytes")


def _special_devices() -> set[int]:
    """st_dev of /proc, /sys and /dev: files there are generated, endless or devices."""
    devs = set()
    for p in ("/proc", "/sys", "/dev"):
        with contextlib.suppress(OSError):
            devs.add(os.stat(p).st_dev)
    return devs


def open_regular(path: str) -> int:
    """A read-only descriptor of `path` if it is a regular file outside /proc, /sys and /dev.

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer for ever; a
    regular file ignores it. Symlinks are followed (mirrors and DVC caches use them): what
    is checked is the file opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FetchError("no such file", missing=True) from None
    except OSError as exc:  # e.g. ENXIO: a socket
        raise FetchError(exc.strerror or str(exc), permanent=True) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_dev in _special_devices():
        os.close(fd)
        raise FetchError("not a regular file", permanent=True)
    return fd


def copy_local(path: str, dest: Path, max_bytes: int, dog: Watchdog) -> None:
    """Copy a directory mirror's file: a regular file, at most `max_bytes` actually read, within
    the same deadlines as a download (a mirror on a slow network filesystem)."""
    fd = open_regular(path)
    too_big = f"more than {mb(max_bytes)}, the most this file can hold: refused"
    try:
        with os.fdopen(fd, "rb", buffering=0) as src, open(dest, "wb") as dst:
            if os.fstat(src.fileno()).st_size > max_bytes:
                raise FetchError(
                    f"{os.fstat(src.fileno()).st_size} bytes, {too_big}", permanent=True
                )
            while chunk := src.read(CHUNK):
                dog.progress(len(chunk))
                if dog.done > max_bytes:
                    raise FetchError(too_big, permanent=True)
                dst.write(chunk)
    except OSError as exc:
        raise FetchError(exc.strerror or str(exc), permanent=True) from None


def http_error(exc: urllib.error.HTTPError) -> FetchError:
    """An HTTP error answer as a fetch error: 4xx will not change on retry (408 and 429 might);
    5xx is the server's trouble and is retried."""
    permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
    if exc.code == 404:
        reason = "not found (HTTP 404)"
    elif 300 <= exc.code < 400 and "infinite loop" in str(exc.reason):
        reason = f"redirects in a loop or more than {urllib.request.HTTPRedirectHandler.max_redirections} times (HTTP {exc.code})"
    else:
        reason = f"HTTP {exc.code} {brief(exc.reason, 60)}"
    return FetchError(reason, permanent=permanent, missing=exc.code in (404, 410))


def network_error(reason: object, timeout: float) -> FetchError:
    """A short reason for a connection-level failure, and whether retrying can help."""
    if isinstance(reason, socket.gaierror):
        # "Name or service not known" will not change in a second; "temporary failure" may.
        permanent = reason.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
        return FetchError(f"host not found ({reason.strerror})", permanent=permanent)
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return FetchError(f"no answer within {timeout:g} s")
    if (
        isinstance(reason, ConnectionRefusedError)
        or getattr(reason, "errno", None) == errno.ECONNREFUSED
    ):
        return FetchError("connection refused")
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return FetchError(brief(text, 100))


def resolve(url: str, timeout: float) -> None:
    """Look the host up within `timeout`: urlopen's timeout does not cover DNS, which can hang
    for tens of seconds on a machine whose resolver is unreachable."""
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError as exc:  # e.g. a malformed IPv6 address
        raise FetchError(f"malformed URL ({brief(exc, 60)})", permanent=True) from None
    result: dict[str, BaseException] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=lookup, daemon=True)  # daemon: a hung lookup cannot block exit
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise FetchError(f"host lookup for {host} took over {timeout:g} s")
    if "error" in result:
        raise network_error(result["error"], timeout)
