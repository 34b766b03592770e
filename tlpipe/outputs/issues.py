"""`tlpipe issues`: the label issues the analyze stage found, with the command that would move each
image of a folder dataset to the class folder its label more likely is. Nothing is ever moved here:
a person looks at the image first (metrics/analysis/label_issues.png, or the file itself).
"""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path

from tlpipe.core.jsonfiles import load_json
from tlpipe.core.paths import LABEL_ISSUES_FILE, RAW_DIR, source_file
from tlpipe.core.runtime import UserError

SHOWN = ("rank", "split", "source", "given", "suggested", "label_quality")


def read_issues(path: Path = LABEL_ISSUES_FILE) -> list[dict[str, str]]:
    """The rows of label_issues.csv, most likely first."""
    if not path.exists():
        raise UserError(
            f"no label issues at {path}: run `dvc repro analyze` (or `make demo`) first"
        )
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    missing = [column for column in SHOWN if rows and column not in rows[0]]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(missing)}: written by another version; "
            "run `dvc repro analyze`"
        )
    return rows


def image_folder(raw_dir: Path = RAW_DIR) -> Path | None:
    """The image folder the last `download` read (data/raw/source.json), None for other datasets."""
    source = load_json(source_file(raw_dir)) if source_file(raw_dir).exists() else {}
    folder = source.get("folder") if isinstance(source, dict) else None
    return Path(folder) if source.get("dataset") == "folder" and folder else None


def move_command(row: dict[str, str], folder: Path | None) -> str:
    """The shell command that moves the row's file to its suggested class folder ('' for images
    that are not files of a folder dataset: their labels live in the dataset itself)."""
    if folder is None:
        return ""
    source = folder / row["source"]
    target = folder / row["suggested"]
    return f"mv -n -- {shlex.quote(str(source))} {shlex.quote(str(target))}/"


def format_issues(
    rows: list[dict[str, str]], folder: Path | None, *, top: int, as_csv: bool
) -> str:
    """The first `top` rows (all with 0) as an aligned table followed by the move commands, or as
    CSV with a `command` column."""
    shown = rows if top == 0 else rows[:top]
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*SHOWN, "command"])
        writer.writerows([row[c] for c in SHOWN] + [move_command(row, folder)] for row in shown)
        return out.getvalue()
    if not shown:
        return "no label issues found (metrics/analysis/label_issues.csv is empty)\n"
    table = [list(SHOWN)] + [[row[c] for c in SHOWN] for row in shown]
    widths = [max(len(line[i]) for line in table) for i in range(len(SHOWN))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip()
        for line in table
    ]
    lines.append(f"({len(shown)} of {len(rows)} label issues, most likely first)")
    if folder is None:
        lines.append(
            "These images come from a dataset, not a folder: correct their labels at the source."
        )
    else:
        lines += ["", "After looking at an image, move it to its class folder with (never done "]
        lines[-1] += "for you), then run `dvc repro`:"
        lines += [f"  {move_command(row, folder)}" for row in shown]
    return "\n".join(lines) + "\n"
