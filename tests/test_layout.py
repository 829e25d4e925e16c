"""tests/ is test modules and the helpers package: no test module imports another.

A helper a second test module needs moves to tests/helpers/ (or becomes a conftest fixture), so
each test module can be read, moved and run alone, and conftest.py stays fixtures and hooks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str) -> list[str]:
    """The test modules (`test_*`, `conftest`) that `source` imports, lazily inside functions too."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "conftest" or top.startswith("test_"):
                found.append(name)
    return found


def test_no_module_under_tests_imports_a_test_module():
    offenders = {
        path.relative_to(TESTS).as_posix(): found
        for path in sorted(TESTS.rglob("*.py"))
        if (found := imported_test_modules(path.read_text()))
    }
    assert offenders == {}, f"move what they share to tests/helpers/ or a fixture: {offenders}"


def test_every_form_of_import_of_a_test_module_is_seen():
    source = """
from test_pipeline import run
import test_stage_deps as deps
from conftest import REPO
from helpers.repo import make_workspace
import testing, helpers


def lazy():
    import test_training.sub
"""
    assert sorted(imported_test_modules(source)) == [
        "conftest",
        "test_pipeline",
        "test_stage_deps",
        "test_training.sub",
    ]


def test_a_test_that_builds_a_slow_fixture_is_marked_slow(request):
    """`pytest -m "not slow"` never builds the pipeline or runs a benchmark (conftest.py)."""
    (conftest,) = [
        plugin
        for plugin in request.config.pluginmanager.get_plugins()
        if getattr(plugin, "__file__", "") == str(Path(__file__).with_name("conftest.py"))
    ]
    users = [i for i in request.session.items if conftest.SLOW_FIXTURES & set(i.fixturenames)]
    if not users:
        pytest.skip("no test of this session uses a slow fixture (run with the whole suite)")
    unmarked = [i.nodeid for i in users if i.get_closest_marker("slow") is None]
    assert not unmarked, unmarked
