"""The code stays easy to read: no module over 400 lines and no function over 60, in the package,
the stages and the benchmark (tests are exempt: a table of cases may be long)."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
CHECKED = ("tlpipe", "stages", "benchmarks")
MODULES = sorted(path for folder in CHECKED for path in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(REPO)))
def test_modules_and_functions_are_short(module):
    text = module.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{module.name}: {text.count(chr(10))} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
