"""The determinism contract (docs/trusted.md): what stays byte-identical when the thread count
changes.

Each stage runs as DVC runs it, `python -m stages.<name>`, in a fresh process whose CPU affinity
is one core or two: TensorFlow's default thread count follows the affinity mask, as it follows
the CPUs Ray gives an actor. With oneDNN (on for every x86 CPU, tlpipe/core/cpu.py) the feature
caches are the same bytes either way; training depends on the thread count, so `threads` pins it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import SHIPPED_PARAMS, VENV_BIN, command_env
from tlpipe.compute.precision import effective_precision
from tlpipe.core.cpu import kernel_flags

FEATURE_FILES = (
    "head/train.npy",
    "head/test.npy",
    "boundary/train.npy",
    "boundary/test.npy",
    "backbone.keras",
)
FILES_TRAINED = ("head.keras", "model.keras")
CORES = {"one core": {0}, "two cores": {0, 1}}


def stage(
    name: str, cwd: Path, cores: set[int] | None = None, **environ: str
) -> subprocess.CompletedProcess:
    """`python -m stages.<name>` in `cwd`, pinned to `cores` (None: this process's own), with
    `environ` added to the environment."""
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-m", f"stages.{name}"],
        cwd=cwd,
        env={**command_env(), **environ},
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores),
    )
    assert result.returncode == 0, f"{name} failed:\n{(result.stdout + result.stderr)[-3000:]}"
    return result


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A project folder with params.yaml (digits, random weights, 120 training images) and
    data/prepared/."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("these tests compare one core with two: run them on a machine with two")
    root = tmp_path_factory.mktemp("determinism")
    params = yaml.safe_load(SHIPPED_PARAMS)
    params["data"].update(dataset="digits", limit=120)
    params["backbone"]["weights"] = "none"
    params["train"]["epochs"], params["finetune"]["epochs"] = 2, 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stage("download", root)
    stage("prepare", root, CORES["one core"])
    return root


def test_prepared_images_are_the_same_bytes_on_one_core_and_two(prepared, tmp_path):
    """prepare's resize (tf.image.resize) with one thread and with two."""
    project = project_with(prepared, tmp_path / "two cores")
    stage("prepare", project, CORES["two cores"])
    for split in ("train", "val", "test"):
        name = f"data/prepared/{split}_x.npy"
        assert (project / name).read_bytes() == (prepared / name).read_bytes(), name


def project_with(prepared: Path, destination: Path, **changes: object) -> Path:
    """A copy of the prepared project with top-level or section params changed
    ({"features": {"precision": "float32"}, "threads": 2})."""
    shutil.copytree(prepared, destination)
    params = yaml.safe_load((destination / "params.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return destination


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_feature_caches_are_the_same_bytes_on_one_core_and_two(prepared, tmp_path, precision):
    """The features stage's own extraction, run with 1 and with 2 intra-op threads: the same
    bytes in both caches, and compute.json records the threads each run used."""
    expected, _ = effective_precision(precision, flags=kernel_flags(), has_gpu=False)
    caches = {}
    for label, cores in CORES.items():
        project = project_with(prepared, tmp_path / label, features={"precision": precision})
        stage("features", project, cores)
        computed_on = json.loads((project / "data/features/compute.json").read_text())
        assert computed_on["threads"] == len(cores)
        assert computed_on["onednn"] == "on"
        assert computed_on["precision"] == expected
        caches[label] = {
            name: (project / "data/features" / name).read_bytes() for name in FEATURE_FILES
        }
    assert caches["one core"] == caches["two cores"]


def test_float32_feature_caches_are_the_same_bytes_with_avx2_kernels(prepared, tmp_path):
    """oneDNN limited to its AVX2 kernels (ONEDNN_MAX_CPU_ISA, what an AVX2-only CPU runs) gives
    the float32 caches this CPU's own kernels give. On an AVX2-only machine both runs are that."""
    caches = {}
    for label, environ in (("own", {}), ("avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2"})):
        project = project_with(prepared, tmp_path / label, features={"precision": "float32"})
        stage("features", project, **environ)
        caches[label] = {
            name: (project / "data/features" / name).read_bytes() for name in FEATURE_FILES
        }
    assert caches["own"] == caches["avx2"]


def test_pinned_threads_give_the_same_model_on_one_core_and_two(prepared, tmp_path):
    """Training depends on the thread count (fine-tuning with oneDNN's AVX2 kernels: 1 and 2
    threads gave different weights), so `threads: 2` trains with two threads whatever the
    machine has: the same head and fine-tuned model from a one-core and a two-core process."""
    features = project_with(prepared, tmp_path / "features", threads=2)
    stage("features", features)
    models = {}
    for label, cores in CORES.items():
        project = tmp_path / label
        shutil.copytree(features, project)
        for name in ("train", "finetune"):
            stage(name, project, cores)
        for name in ("train", "finetune"):
            computed_on = json.loads((project / f"metrics/{name}/compute.json").read_text())
            assert computed_on["threads"] == 2
        models[label] = [(project / f"models/{name}").read_bytes() for name in FILES_TRAINED]
    assert models["one core"] == models["two cores"]

    # Scoring that model is a forward pass, like features: the same report on one core and two.
    for label, cores in CORES.items():
        stage("evaluate", tmp_path / label, cores)
    for name in ("metrics/evaluate.json", "metrics/report/confusion.csv"):
        assert (tmp_path / "one core" / name).read_bytes() == (
            tmp_path / "two cores" / name
        ).read_bytes(), name
