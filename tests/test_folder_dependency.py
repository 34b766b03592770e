"""An image folder is a dependency of `download` by its contents.

dvc.yaml lists `${data.folder}` among download's deps, so DVC hashes the folder (every file's
bytes and relative path) whether it is a plain folder or one tracked with `dvc add`. Adding,
deleting, replacing or renaming images marks download changed; touching a file or changing one
outside the folder does not. Switching between a folder, digits and a tfds name is a params edit.
Each case goes through `dvc status --json download`; a few through a real `dvc repro -s download`.
DVC's hash skips links to folders (a class folder linked in changes no hash): the `check` stage,
which runs every time, refuses one leading outside and records those inside, which download
depends on.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import project as shared
from tests.helpers import (
    ALWAYS_RUN,
    commit_all,
    copy_project,
    run,
    stages_that_ran,
)
from tlpipe.core.paths import NO_FOLDER, RAW_DIR, raw_labels

PER_CLASS = 12  # enough for prepare's stratified val and test splits


def save_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_params(project: Path, **changes: object) -> None:
    """The shipped params with random weights and `changes` ({"data.dataset": "folder"})."""
    shared.write_params(project, {"backbone.weights": "none", **changes})


def status(project: Path) -> dict:
    """`dvc status --json download`: {} when up to date."""
    return json.loads(run(["dvc", "status", "--json", "download"], project).stdout)


@pytest.fixture(scope="module", params=["plain", "dvc-add"])
def project(request, tmp_path_factory) -> Path:
    """A project copy reading photos/ (2 classes x 12 PNGs), downloaded and prepared once.
    `dvc-add`: photos/ is tracked with `dvc add` and photos.dvc committed."""
    root = copy_project(tmp_path_factory.mktemp(request.param))
    for index in range(2 * PER_CLASS):
        save_png(root / "photos" / ("cats", "dogs")[index // PER_CLASS] / f"{index}.png", index)
    write_params(root, **{"data.dataset": "folder", "data.folder": "photos"})
    if request.param == "dvc-add":
        run(["dvc", "add", "photos"], root)
        assert (root / "photos.dvc").is_file()
    commit_all(root, "photos")
    result = run(["dvc", "repro", "prepare"], root)
    assert stages_that_ran(result.output) == ALWAYS_RUN | {"download", "prepare"}
    assert status(root) == {}
    return root


def add_image(photos: Path) -> Callable[[], None]:
    save_png(photos / "cats" / "new.png", 99)
    return (photos / "cats" / "new.png").unlink


def delete_image(photos: Path) -> Callable[[], None]:
    path = photos / "dogs" / f"{PER_CLASS}.png"
    data = path.read_bytes()
    path.unlink()
    return lambda: path.write_bytes(data)


def replace_bytes(photos: Path) -> Callable[[], None]:
    path = photos / "cats" / "0.png"
    data = path.read_bytes()
    save_png(path, 1234)  # same name, same size: other pixels
    assert path.stat().st_size == len(data) and path.read_bytes() != data
    return lambda: path.write_bytes(data)


def rename_class(photos: Path) -> Callable[[], None]:
    (photos / "dogs").rename(photos / "hounds")
    return lambda: (photos / "hounds").rename(photos / "dogs")


def touch_only(photos: Path) -> Callable[[], None]:
    path = photos / "cats" / "1.png"
    os.utime(path, (path.stat().st_atime + 3600, path.stat().st_mtime + 3600))
    return lambda: None


def change_outside(photos: Path) -> Callable[[], None]:
    """A new image next to the folder, and the project's README edited."""
    save_png(photos.parent / "other" / "cats" / "x.png", 5)
    readme = photos.parent / "README.md"
    text = readme.read_text()
    readme.write_text(text + "\nedited\n")
    return lambda: (shutil.rmtree(photos.parent / "other"), readme.write_text(text))


CHANGES = [add_image, delete_image, replace_bytes, rename_class]
NOT_CHANGES = [touch_only, change_outside]


@pytest.mark.parametrize("change", CHANGES + NOT_CHANGES, ids=lambda change: change.__name__)
def test_folder_contents_are_the_dependency(project: Path, change):
    undo = change(project / "photos")
    try:
        changed = status(project)
    finally:
        undo()
    if change in CHANGES:
        assert changed == {"download": [{"changed deps": {"photos": "modified"}}]}
    else:
        assert changed == {}
    assert status(project) == {}


def test_repro_reruns_download_and_what_follows_for_new_images_only(project: Path):
    undo = add_image(project / "photos")
    try:
        result = run(["dvc", "repro", "prepare"], project)
        assert stages_that_ran(result.output) == ALWAYS_RUN | {"download", "prepare"}
        assert f"download: folder: {2 * PER_CLASS + 1} train" in result.stdout
    finally:
        undo()
    touch_only(project / "photos")
    # back to the committed images, whose outputs DVC's run cache still holds
    result = run(["dvc", "repro", "prepare"], project)
    assert "Stage 'download' is cached - skipping run, checking out outputs" in result.output
    assert len(np.load(project / raw_labels("train"))) == 2 * PER_CLASS
    result = run(["dvc", "repro", "prepare"], project)
    assert stages_that_ran(result.output) == ALWAYS_RUN
    assert "Stage 'download' didn't change, skipping" in result.output


def test_switching_datasets_edits_params_only(project: Path):
    dvc_yaml = (project / "dvc.yaml").read_bytes()
    write_params(project, **{"data.dataset": "digits", "data.folder": str(NO_FOLDER)})
    assert status(project) == {
        "download": [
            {"changed deps": {str(NO_FOLDER): "modified", "params.yaml": {"data": "modified"}}}
        ]
    }
    result = run(["dvc", "repro", "-s", "download"], project)
    assert "download: digits: 1797 train" in result.stdout
    # with digits, the image folder is no dependency: changing it reruns nothing
    undo = add_image(project / "photos")
    assert status(project) == {}
    undo()
    write_params(project, **{"data.dataset": "folder", "data.folder": "photos"})
    run(["dvc", "repro", "-s", "download"], project)
    assert len(np.load(project / raw_labels("train"))) == 2 * PER_CLASS
    assert status(project) == {}
    assert (project / "dvc.yaml").read_bytes() == dvc_yaml


def raw_bytes(project: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (project / RAW_DIR).iterdir()}


@pytest.mark.slow
def test_a_class_folder_linked_from_outside_after_a_run_is_refused_by_the_next(project: Path):
    elsewhere = project.parent / f"{project.name}-elsewhere"
    save_png(elsewhere / "x.png", 7)
    (project / "photos/birds").symlink_to(elsewhere)
    before = raw_bytes(project)
    try:
        assert status(project) == {}  # DVC's hash of photos/ does not see the link
        result = run(["dvc", "repro", "prepare"], project, check=False)
    finally:
        (project / "photos/birds").unlink()
    assert result.returncode != 0
    assert "Traceback" not in result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: data.dataset: photos/birds links to {elsewhere}, outside ")
    assert stages_that_ran(result.output) == ALWAYS_RUN  # stopped before download
    assert raw_bytes(project) == before
    result = run(["dvc", "repro", "prepare"], project)  # the link gone: nothing to redo
    assert stages_that_ran(result.output) == ALWAYS_RUN


@pytest.mark.slow
def test_a_class_folder_linked_from_inside_reruns_download(project: Path):
    (project / "photos/kittens").symlink_to("cats")
    try:
        result = run(["dvc", "repro", "prepare"], project)
        assert stages_that_ran(result.output) == ALWAYS_RUN | {"download", "prepare"}
        assert f"download: folder: {3 * PER_CLASS} train" in result.stdout
        assert "in 3 classes" in result.stdout
    finally:
        (project / "photos/kittens").unlink()
    run(["dvc", "repro", "prepare"], project)  # back to the committed folder
    assert len(np.load(project / raw_labels("train"))) == 2 * PER_CLASS
