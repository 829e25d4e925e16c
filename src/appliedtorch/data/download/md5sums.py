"""A mirror's MD5SUMS file (`md5sum`'s output: `<md5>  <file>` a line) read as data.

    >>> parse_md5sums("d41d8cd98f00b204e9800998ecf8427e  t10k-labels-idx1-ubyte.gz\\n", "MD5SUMS")
    {'t10k-labels-idx1-ubyte.gz': 'd41d8cd98f00b204e9800998ecf8427e'}

Files written on Windows are read as they are meant: a byte-order mark and CRLF line ends are
accepted; `*name` (binary mode) and `./name` name the same file.
"""

from __future__ import annotations

import re

from appliedtorch.core.errors import DataError
from appliedtorch.data.limits import brief

_LINE = re.compile(r"([0-9a-fA-F]{32})[ \t]+\*?(?:\./)?(\S.*)")


def parse_md5sums(text: str, where: str) -> dict[str, str]:
    """{file name: md5} from an MD5SUMS text; DataError naming the line that is not one."""
    sums = {}
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        if not m:
            raise DataError(
                f"{where} line {number} is not in md5sum format (32 hex digits, spaces, a file "
                f"name): {brief(line, 60)!r}"
            )
        sums[m[2].rsplit("/", 1)[-1]] = m[1].lower()
    return sums
