"""Passwords out of what a user sees: any `scheme://user:password@host` in a line becomes `user:***`.

    >>> redact("cannot reach postgresql://ml:s3cret@db:5432/mlflow")
    'cannot reach postgresql://ml:***@db:5432/mlflow'

Light on purpose (no MLflow, no tracking code): the stage wrapper in core/cli.py redacts every
error and log line with it, and the download stages load that wrapper.
"""

from __future__ import annotations

import re

from appliedtorch.core.utils import first_line

# `scheme://user:` then the password up to the `@`: the scheme's grammar is RFC 3986's.
CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*):[^/@\s]*@")


def redact(text: str) -> str:
    """`scheme://user:***@host`: a password in any URI in `text` is replaced by ***."""
    return CREDENTIALS.sub(r"\1:***@", text)


def error_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first telling line (core.utils.first_line), clipped, passwords redacted."""
    return redact(first_line(exc)[:limit])
