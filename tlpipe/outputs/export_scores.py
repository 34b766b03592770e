"""metrics/export.json: each exported file's size, test accuracy, top-1 agreement with the Keras
model it was made from, and single-image latency, each file run by its own runtime in a fresh
process (tlpipe/outputs/exported_run.py), as a user of the file would run it.

Sizes, accuracies and agreements are the same run to run (the files are); latencies are timings
of this CPU and vary.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tlpipe.analysis.tables import markdown_table
from tlpipe.core.export_formats import FORMATS, RUNTIMES
from tlpipe.core.files import readable_size
from tlpipe.core.paths import EXPORT_DIR, LABELS_NAME
from tlpipe.core.runtime import UserError
from tlpipe.outputs import exported_run  # run as a child process, not called here


def size_in_bytes(path: Path) -> int:
    """A file's size, or the total of the files under a folder."""
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


CHECK_TIMEOUT = 3600  # seconds for one file on the test split: a hung runtime stops the stage


def run_exported(runtime: str, path: Path, images: Path) -> tuple[np.ndarray, float]:
    """(probabilities (n, classes), single-image latency in seconds) of the file at `path` on the
    uint8 images in the .npy file `images`, in a child process."""
    with tempfile.TemporaryDirectory(prefix="tlpipe-export-") as scratch:
        out, timing = Path(scratch) / "probabilities.npy", Path(scratch) / "latency.json"
        command = [sys.executable, "-m", exported_run.__name__, runtime, str(path)]
        try:
            result = subprocess.run(
                [*command, str(images), str(out), str(timing)],
                capture_output=True,
                text=True,
                check=False,
                timeout=CHECK_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise UserError(
                f"export: checking {path.name} in {RUNTIMES[runtime]} took over "
                f"{CHECK_TIMEOUT} s; stopped"
            ) from None
        if result.returncode != 0 or not timing.is_file():
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"export: {path.name} failed in {RUNTIMES[runtime]}: {last}")
        return np.load(out), json.loads(timing.read_text())["latency_s"]


def score_exports(
    folder: Path, formats: list[str], images: Path, labels: np.ndarray, reference: np.ndarray
) -> dict:
    """{"test_images": n, "files": {format: scores}} for each of `formats` in `folder`, numbers
    only (so `dvc metrics diff` compares every value; each format's file and runtime are in
    tlpipe/core/export_formats.py). `images`: the test split (.npy, uint8); `labels` its
    classes (n,), `reference` the Keras model's classes (n,)."""
    files = {}
    for name in formats:
        row = FORMATS[name]
        path = folder / row.file
        probabilities, latency = run_exported(row.runtime, path, images)
        predicted = probabilities.argmax(axis=1)
        size = size_in_bytes(path)
        # a quantized file's float file, also when only built to make it (removed after this)
        compared = folder / FORMATS[row.compared_with].file if row.compared_with else None
        files[name] = scores = {
            "bytes": size,
            "accuracy": round(float(np.mean(predicted == labels)), 4),
            "agreement": round(float(np.mean(predicted == reference)), 4),
            "latency_ms": round(latency * 1000, 3),
        }
        if compared is not None and compared.exists():
            scores["size_ratio"] = round(size / size_in_bytes(compared), 4)
        print(
            f"export: {row.file}: {readable_size(size)}, test accuracy {scores['accuracy']:.4f}, "
            f"agrees with the Keras model on {scores['agreement']:.2%}, "
            f"{scores['latency_ms']:.2f} ms an image"
        )
    return {"test_images": len(labels), "files": files}


def files_table(export_scores: dict) -> str:
    """Each exported file: what it is, its size, and how it did on the test split in its own
    runtime (metrics/export.json); then how far each quantized file's accuracy is from its float
    file's."""
    files = export_scores["files"]
    rows = []
    for name, scores in files.items():
        ratio = f" ({scores['size_ratio']:.2f}x)" if "size_ratio" in scores else ""
        rows.append(
            [
                f"`{EXPORT_DIR / FORMATS[name].file}`",
                FORMATS[name].what,
                readable_size(scores["bytes"]) + ratio,
                f"{scores['accuracy']:.4f}",
                f"{scores['agreement']:.2%}",
                f"{scores['latency_ms']:.2f} ms",
                RUNTIMES[FORMATS[name].runtime],
            ]
        )
    rows.append([f"`{EXPORT_DIR / LABELS_NAME}`", "class names, one a line, in output order"])
    rows[-1] += [""] * 5
    header = ["file", "what", "size (x its float file)", "test accuracy", "agrees with Keras"]
    table = "\n".join(markdown_table([*header, "1 image", "run in"], rows))
    notes = []
    for name, scores in files.items():
        float_format = FORMATS[name].compared_with
        if float_format in files:
            points = 100 * (scores["accuracy"] - files[float_format]["accuracy"])
            notes.append(
                f"`{FORMATS[name].file}`: {points:+.1f} points of test accuracy against "
                f"`{FORMATS[float_format].file}`"
            )
    measured = (
        f"Each file was run on the {export_scores['test_images']} test images by its own runtime "
        '("run in") in a fresh process (metrics/export.json); "agrees with Keras" is how often '
        'its top class is the Keras model\'s, and "1 image" the median time of one call on one '
        "image on the CPU above (a timing: it varies run to run)."
    )
    return "\n\n".join([table, measured, *(["; ".join(notes) + "."] if notes else [])])
