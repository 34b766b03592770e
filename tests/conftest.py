"""Fixtures shared by the tests; plain helpers are in tests/helpers.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import tlpipe  # noqa: F401  first: oneDNN on before any test module imports TensorFlow
from tests.helpers import SHIPPED_PARAMS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every outgoing connection fail at once, as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def in_tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working folder holding a copy of params.yaml (stages read ./params.yaml)."""
    (tmp_path / "params.yaml").write_text(SHIPPED_PARAMS)
    monkeypatch.chdir(tmp_path)
    return tmp_path
