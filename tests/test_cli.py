"""`tlpipe predict` and `tlpipe summary` on a small model and generated image files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import VENV_BIN, run, save_random_model
from tlpipe.compute.archives import load_model
from tlpipe.data.images import to_model_input

CLASSES = ["cat", "dog", "horse"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """models/model.keras + model.json (as finetune writes them) and a folder of test images."""
    root = tmp_path_factory.mktemp("cli")
    save_random_model(root, CLASSES, units=8)
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images / "colour.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
        images / "nested/photo.jpg", quality=90
    )
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(images / "grey.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (images / "notes.txt").write_text("ignored: not an image suffix")
    return root


def tlpipe(args: list[str], cwd: Path, check: bool = False):
    return run([str(VENV_BIN / "tlpipe"), *args], cwd, check=check)


def test_predict_classifies_every_readable_image_and_reports_the_broken_one(workdir):
    result = tlpipe(["predict", "images"], workdir)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        "images/colour.png",
        "images/grey.png",
        "images/nested/photo.jpg",
    ]
    for line in lines:
        _, name, probability = line.split("\t")
        assert name in CLASSES and 0.0 <= float(probability) <= 1.0
    assert "error: images/broken.jpg: not a readable image" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_uses_the_training_preprocessing(workdir):
    result = tlpipe(["predict", "--json", "--top-k", "3", "images/grey.png"], workdir, check=True)
    [entry] = json.loads(result.stdout)
    probabilities = {p["class"]: p["probability"] for p in entry["predictions"]}
    assert set(probabilities) == set(CLASSES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    # The same numbers as the model on to_model_input of the grey file (as prepare does it).
    model = load_model(workdir / "models/model.keras")
    grey = np.asarray(Image.open(workdir / "images/grey.png").convert("RGB"))[np.newaxis]
    expected = model.predict(to_model_input(grey, 32), verbose=0)[0]
    for index, name in enumerate(CLASSES):
        assert probabilities[name] == pytest.approx(float(expected[index]), abs=1e-5)


def test_predict_without_a_model_says_where_it_looked_and_how_to_pass_one(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"")
    result = tlpipe(["predict", "photo.png"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"error: no model at models/model.keras (looked in {tmp_path.resolve() / 'models'}): "
        "run `dvc repro` in the project's folder, or pass --model PATH to a model.keras that "
        "finetune wrote"
    )
    assert "Traceback" not in result.stderr


def test_a_model_without_its_json_is_one_line(workdir, tmp_path):
    (tmp_path / "model.keras").write_bytes((workdir / "models/model.keras").read_bytes())
    result = tlpipe(["predict", "--model", "model.keras", str(workdir / "images")], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "model.json is missing: it is written with model.keras by the finetune stage "
        "(run `dvc repro`)"
    )


def test_version(tmp_path):
    result = tlpipe(["--version"], tmp_path, check=True)
    assert re.fullmatch(r"tlpipe \d+\.\d+\.\d+\n", result.stdout)


def test_summary_lists_layers_with_trainable_flags(workdir):
    result = tlpipe(["summary"], workdir, check=True)
    assert "block5_conv3" in result.stdout and "Trainable" in result.stdout
    assert "Total params" in result.stdout


def test_summary_plot_draws_a_png_or_says_graphviz_is_missing(workdir):
    result = tlpipe(["summary", "--plot", "arch.png"], workdir)
    if shutil.which("dot"):
        assert result.returncode == 0 and Image.open(workdir / "arch.png").format == "PNG"
    else:
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            "error: --plot needs graphviz (the `dot` program) and pydot: "
            "e.g. `apt-get install graphviz`"
        )


def test_help_reads_well():
    for args in (["--help"], ["predict", "--help"], ["summary", "--help"]):
        out = subprocess.run(
            [str(VENV_BIN / "tlpipe"), *args], capture_output=True, text=True, check=True
        ).stdout
        assert out.startswith("usage: tlpipe")
    assert (
        "--top-k N"
        in subprocess.run(
            [str(VENV_BIN / "tlpipe"), "predict", "--help"], capture_output=True, text=True
        ).stdout
    )


def test_predict_on_a_folder_without_images_is_one_line(workdir):
    (workdir / "empty").mkdir(exist_ok=True)
    result = tlpipe(["predict", "empty"], workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: no image files (.jpg, .jpeg, .png")
    )
