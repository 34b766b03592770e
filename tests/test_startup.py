"""What a user sees first: the tool's own output, not TensorFlow's start-up lines (unless asked
for with TLPIPE_VERBOSE=1), and one line when `python` is not the project's interpreter.

Real entry points in subprocesses: a stage (`python -m stages.features`, tiny offline data), a
stage failing after TensorFlow has loaded, `tlpipe predict`, and `dvc exp run` called as
`.venv/bin/dvc` from a shell whose PATH does not hold the venv.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import (
    REPO,
    SHIPPED_PARAMS,
    VENV_BIN,
    command_env,
    copy_project,
    run,
    save_random_model,
)

# TensorFlow's start-up lines: absl's banner, the oneDNN notice, CPU-feature and cuda notices,
# tf.data's memory patch, and any line in the C++ log formats (absl's "I1122 22:30:01.123 ..."
# and TensorFlow's older "2026-11-22 22:30:01.123: I tensorflow/...").
TF_START_UP = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|This TensorFlow binary"
    r"|Memory patch applied|cuda drivers|cudart|TF-TRT"
    r"|^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ",
    re.MULTILINE,
)
OFFLINE_TINY = {"data": {"dataset": "digits", "limit": 200}, "backbone": {"weights": "none"}}


def environment(*, verbose: bool) -> dict[str, str]:
    """command_env() without its TF_CPP_MIN_LOG_LEVEL (the tools must quiet TensorFlow on their
    own), with or without TLPIPE_VERBOSE."""
    env = {
        k: v
        for k, v in command_env().items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "TLPIPE_VERBOSE")
    }
    return {**env, "TLPIPE_VERBOSE": "1"} if verbose else env


def call(cmd: list[str], cwd: Path, *, verbose: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=environment(verbose=verbose), capture_output=True, text=True, timeout=600
    )


def stage(name: str, cwd: Path, *, verbose: bool = False) -> subprocess.CompletedProcess:
    return call([str(VENV_BIN / "python"), "-m", f"stages.{name}"], cwd, verbose=verbose)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A project folder holding params.yaml (tiny, offline) and data/prepared/."""
    root = tmp_path_factory.mktemp("startup")
    params = yaml.safe_load(SHIPPED_PARAMS)
    for section, values in OFFLINE_TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("download", "prepare"):
        result = stage(name, root)
        assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_a_stage_prints_its_own_lines_first_and_tensorflows_only_when_asked(prepared):
    quiet = stage("features", prepared)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert TF_START_UP.search(quiet.stdout + quiet.stderr) is None, quiet.stderr[:2000]
    assert quiet.stdout.startswith("features: ")  # the precision line, or its fallback
    assert re.match(r"\s*features train: ", quiet.stderr)  # its own progress bar comes first

    verbose = stage("features", prepared, verbose=True)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert TF_START_UP.search(verbose.stderr), verbose.stderr[:2000]
    assert verbose.stdout.startswith("features: ")


def test_a_stage_failing_after_tensorflow_loads_prints_one_line(prepared, tmp_path):
    """train loads TensorFlow before it finds its input missing: still only the error line."""
    (tmp_path / "params.yaml").write_text((prepared / "params.yaml").read_text())
    quiet = stage("train", tmp_path)
    assert quiet.returncode == 2
    [error] = quiet.stderr.splitlines()
    assert error.startswith("error: ") and "data/features/head" in error, quiet.stderr
    assert quiet.stdout == ""

    verbose = stage("train", tmp_path, verbose=True)  # shows that TensorFlow had loaded
    assert TF_START_UP.search(verbose.stderr), verbose.stderr[:2000]
    assert verbose.stderr.splitlines()[-1] == error


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """models/model.keras + model.json as finetune writes them, two images and a broken one."""
    root = tmp_path_factory.mktemp("predict")
    save_random_model(root, ["a", "b"], units=4)
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for name in ("one.png", "two.png"):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / name)
    (root / "images/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_predict_prints_its_results_and_one_line_errors_only(model_dir):
    tlpipe = [str(VENV_BIN / "tlpipe"), "predict", "images"]
    quiet = call(tlpipe, model_dir)
    assert quiet.returncode == 1  # one unreadable file
    assert [line.split("\t")[0] for line in quiet.stdout.splitlines()] == [
        "images/one.png",
        "images/two.png",
    ]
    [error] = quiet.stderr.splitlines()
    assert error.startswith("error: images/broken.jpg: not a readable image")

    verbose = call(tlpipe, model_dir, verbose=True)
    assert TF_START_UP.search(verbose.stderr), verbose.stderr[:2000]
    assert verbose.stdout == quiet.stdout
    assert verbose.stderr.splitlines()[-1] == error


# The export stage's conversions of a tiny model, every format (the int8 ones calibrated), imports
# in the stage's order (tlpipe first).
EXPORT_TINY_MODEL = """
import sys
from pathlib import Path
from tlpipe.core.export_formats import FORMAT_NAMES
from tlpipe.outputs.export import export_model, use_pure_python_protobuf
use_pure_python_protobuf()
import keras
import numpy as np
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, strides=4),
    keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
samples = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
export_model(model, Path(sys.argv[1]), image_size=32, class_names=["a", "b"],
    formats=list(FORMAT_NAMES), calibration=samples)
print("exported")
"""


def test_the_export_conversions_print_nothing_even_where_tensorflow_imported_quietly(tmp_path):
    """With oneDNN off (as on CPUs without AVX-512), `import tensorflow` logs nothing through
    absl, so absl's banner came out of the LiteRT converter in the export stage instead."""
    (tmp_path / "export").mkdir()
    env = {**environment(verbose=False), "TF_ENABLE_ONEDNN_OPTS": "0"}
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", EXPORT_TINY_MODEL, str(tmp_path / "export")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "exported\n"
    assert TF_START_UP.search(result.stderr) is None, result.stderr[:2000]
    assert result.stderr == ""


@pytest.mark.slow
def test_the_demo_runs_dvc_without_its_warnings_about_nothing_to_restore(tmp_path):
    """`make demo` on a fresh clone: plain `dvc exp run` warns "No file hash info found ... It
    won't be created" once per output before any stage runs (no dvc.lock yet); the demo's DVC
    command (tlpipe/outputs/dvcrun.py) leaves that out. Both run the first two stages only."""
    demo = run(["make", "-n", "--no-print-directory", "demo"], REPO).stdout
    (line,) = [line for line in demo.splitlines() if " -m tlpipe.outputs.dvcrun exp run " in line]
    _, *arguments = shlex.split(line)  # the venv python make names: the tests run with theirs
    results = {}
    for name, command in (("dvc", [str(VENV_BIN / "dvc")]), ("demo", [str(VENV_BIN / "python")])):
        project = copy_project(tmp_path / name)
        words = arguments if name == "demo" else arguments[2:]  # without `-m tlpipe.outputs.dvcrun`
        results[name] = run([*command, *words, "check", "download"], project)
    assert results["dvc"].stderr.count("No file hash info found") >= 2  # what DVC does
    assert results["demo"].stderr == ""
    assert "Running stage 'download'" in results["demo"].stdout


@pytest.mark.parametrize("first_on_path", ["bare venv", "system only"])
def test_dvc_without_the_venv_on_path_stops_with_one_line(tmp_path, first_on_path):
    """`.venv/bin/dvc exp run` from a shell where `python3` is another interpreter: a bare venv of
    the same Python without the project's packages, or the system's (a plain login shell)."""
    bare = tmp_path / "bare"
    subprocess.run([str(VENV_BIN / "python"), "-m", "venv", "--without-pip", str(bare)], check=True)
    system_path = os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"])
    path = system_path
    if first_on_path == "bare venv":
        path = f"{bare / 'bin'}{os.pathsep}{system_path}"
    project = copy_project(tmp_path / "project")
    env = {**command_env(), "PATH": path}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), "exp", "run", "-S", "lr=1e-5"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output and "not found" not in output, output
    assert "ModuleNotFoundError" not in output, output
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    interpreter = str(bare / "bin" / "python3") if first_on_path == "bare venv" else ""
    assert line.startswith(f"error: `python3` here is {interpreter}"), line
    assert "which lacks the project's packages" in line
    assert "activate the project's venv (`. .venv/bin/activate`)" in line
