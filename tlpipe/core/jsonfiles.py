"""The JSON files (classes.json, model.json, compute.json): written atomically, read within a size
and depth limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlpipe.core.files import RERUN_HINT, atomic_path, readable_size
from tlpipe.core.runtime import UserError

MAX_JSON_BYTES = 10 * 2**20  # classes.json and model.json hold a few kB
MAX_JSON_DEPTH = 32  # the pipeline's JSON nests 2 levels deep


def save_json(path: Path, data: Any) -> None:
    """Write JSON atomically, indented, keys in a stable order."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_json(path: Path) -> Any:
    """Read a JSON file written by an earlier stage: at most MAX_JSON_BYTES, nested at most
    MAX_JSON_DEPTH levels; one line if not."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise UserError(
                f"{path} is {readable_size(size)}; the limit for the JSON files the pipeline reads "
                f"is {readable_size(MAX_JSON_BYTES)} (MAX_JSON_BYTES); {RERUN_HINT}"
            )
        return parse_json(path.read_text(), path, max_depth=MAX_JSON_DEPTH)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run `dvc repro` to create it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); {RERUN_HINT}") from None


def parse_json(
    text: str | bytes, path: Path, *, max_depth: int, limit_name: str = "MAX_JSON_DEPTH"
) -> Any:
    """json.loads, refusing documents nested deeper than `max_depth` (Python's parser recurses,
    so a deep enough document would otherwise end in a RecursionError)."""
    too_deep = UserError(
        f"{path} nests deeper than {max_depth} levels ({limit_name}), which no file the "
        f"pipeline writes does; {RERUN_HINT}"
    )
    try:
        data = json.loads(text)
    except RecursionError:
        raise too_deep from None
    level, nodes = 0, [data]
    while nodes:  # breadth first, one level at a time
        level += 1
        if level > max_depth:
            raise too_deep
        nodes = [
            child
            for node in nodes
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return data
