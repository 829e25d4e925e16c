"""The one rule for class names, wherever they come from: a mirror's batches.meta (checked at
download) or a model's metadata (predict, which reads data/ as classify may).

    >>> check_class_names(["cat", "dog"])  # None: fine
    >>> check_class_names(["cat", "</script>"])
    Traceback (most recent call last):
    ValueError: class name '</script>' holds a markup character (one of <>&"'): refused

A name reaches a terminal (predict's tab-separated columns), matplotlib's figures, an HTML page
(the report, `dvc plots show`) and a JSON file keyed by it (`per_class.json`). So a name is 1 to
64 printable characters (no tab, newline or control character), without the characters that
markup gives meaning to, and no two names of one model are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_CLASS_NAME = 64
MARKUP = "<>&\"'"


def class_name_problem(name: object) -> str | None:
    """Why `name` cannot be a class name, or None if it can."""
    if type(name) is not str:
        return f"class name {str(name)[:40]!r} is a {type(name).__name__}, not text"
    if not 0 < len(name) <= MAX_CLASS_NAME:
        return f"class name {name[:40]!r} has {len(name)} characters, not 1 to {MAX_CLASS_NAME}"
    if not name.isprintable():
        return f"class name {name[:40]!r} holds a tab, newline or other unprintable character"
    if any(c in MARKUP for c in name):
        return f"class name {name[:40]!r} holds a markup character (one of {MARKUP}): refused"
    return None


def check_class_names(names: Sequence[object]) -> None:
    """ValueError naming the first name that breaks the rule, or the first name given twice."""
    seen: set[object] = set()
    for name in names:
        problem = class_name_problem(name)
        if problem:
            raise ValueError(problem)
        if name in seen:
            raise ValueError(f"class name {name!r} appears twice: every class needs its own name")
        seen.add(name)
