"""Bad inputs through the real entry points: a non-zero exit and one line naming the problem.

One table: every row writes its inputs into an empty project folder (params.yaml, image folders,
files "left over from an earlier run") and names the command to run there: a stage
(`python -m stages.<name>`), `tlpipe`, or `dvc exp run -S ...` in a copy of the repository. Every
rejected input must exit non-zero with stderr naming the key or file, what was wrong and what is
allowed, and never a Python traceback. A few rows are inputs that must be *accepted* (numbers
given as strings, unreadable images that are skipped with a counted warning, grey/RGBA images).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import OFFLINE, REPO, SHIPPED_PARAMS, VENV_BIN, copy_project, run, set_param

DELETE = object()  # as a value in a params change: remove the key
SPLITS = ("train", "val", "test")
PYTHON = str(VENV_BIN / "python")
TLPIPE = str(VENV_BIN / "tlpipe")
WORKERS = max(2, min(4, os.cpu_count() or 2))  # rows run concurrently, each in its own folder


# --- building inputs -----------------------------------------------------------------------------


def write_params(root: Path, changes: dict[str, object] | None = None) -> None:
    """The project's params.yaml on the offline config, with `changes` ({"train.epochs": 3})
    applied."""
    params = yaml.safe_load(SHIPPED_PARAMS)
    params["data"]["dataset"], params["backbone"]["weights"] = "digits", "none"
    for dotted, value in (changes or {}).items():
        if value is DELETE:
            section, leaf = dotted.split(".")
            del params[section][leaf]
        else:
            set_param(params, dotted, value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(name: str) -> list[str]:
    return [PYTHON, "-m", f"stages.{name}"]


def save_images(
    folder: Path,
    count: int,
    *,
    size: tuple[int, int] = (8, 8),
    mode: str = "RGB",
    seed: int = 0,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / f"{mode.lower()}_{seed}_{i}.png")


def two_classes(root: Path, cats: int = 5, dogs: int = 5) -> None:
    save_images(root / "cats", cats, seed=1)
    save_images(root / "dogs", dogs, seed=2)


def write_prepared(root: Path, sizes: tuple[int, ...] = (12, 4, 4), image_size: int = 32) -> None:
    """A tiny data/prepared/ (two classes) as `prepare` writes it, plus the data/raw/ it came
    from."""
    rng = np.random.default_rng(0)
    prepared, raw = root / "data/prepared", root / "data/raw"
    prepared.mkdir(parents=True)
    raw.mkdir(parents=True)
    for split, count in zip(SPLITS, sizes, strict=True):
        labels = np.arange(count) % 2
        np.save(
            prepared / f"{split}_x.npy",
            rng.integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8),
        )
        np.save(prepared / f"{split}_y.npy", np.eye(2, dtype=np.float32)[labels])
        np.save(prepared / f"{split}_index.npy", np.arange(count))
    (prepared / "classes.json").write_text(json.dumps(["a", "b"]))
    np.save(raw / "train_images.npy", rng.integers(0, 256, (max(sizes), 8, 8, 1), dtype=np.uint8))
    np.save(raw / "train_labels.npy", np.arange(max(sizes)) % 2)
    (raw / "classes.json").write_text(json.dumps(["a", "b"]))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


class RunsCode:
    """Unpickling this runs a shell command: what a pickled .npy from elsewhere could do."""

    def __reduce__(self):
        return os.system, ("touch PWNED",)


class Assets:
    """Inputs costly to make (a real .keras model), made once for the rows that need them."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()  # rows run in threads: make the model once

    @property
    def model(self) -> Path:
        """A small image classifier (32x32x3 -> 2 classes) saved the way the stages save models."""
        with self._lock:
            return self._model

    @cached_property
    def _model(self) -> Path:
        path = self.folder / "tiny.keras"
        script = (
            "import sys, keras\n"
            "from tlpipe.storage import save_model\n"
            "keras.utils.set_random_seed(0)\n"
            "save_model(keras.Sequential([keras.Input((32, 32, 3)), "
            "keras.layers.Conv2D(4, 3, strides=4),\n"
            "    keras.layers.GlobalAveragePooling2D(), "
            "keras.layers.Dense(2, activation='softmax')]), sys.argv[1])\n"
        )
        run([PYTHON, "-c", script, str(path)], REPO)
        return path

    def install_model(self, root: Path, classes: tuple[str, ...] = ("cats", "dogs")) -> None:
        """models/model.keras and models/model.json as `finetune` leaves them."""
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "models/model.keras").write_bytes(self.model.read_bytes())
        (root / "models/model.json").write_text(
            json.dumps({"backbone": "vgg16", "image_size": 32, "classes": list(classes)})
        )


# --- the table -----------------------------------------------------------------------------------

Setup = Callable[
    [Path, Assets], list[str]
]  # writes the inputs into an empty folder; returns the command


@dataclass(frozen=True)
class Case:
    id: str
    setup: Setup
    expect: tuple[str, ...]  # regular expressions that stderr must match
    ok: bool = False  # an input that must be accepted: exit status 0
    check: Callable[[Path, subprocess.CompletedProcess], None] | None = None  # further assertions


def params_case(
    id: str, changes: dict[str, object], *expect: str, ok: bool = False, check=None
) -> Case:
    """A params.yaml change, checked by the first stage (download: params are validated up
    front)."""

    def setup(root: Path, assets: Assets) -> list[str]:
        write_params(root, changes)
        return stage("download")

    return Case(id, setup, expect, ok=ok, check=check)


def params_text_case(id: str, content: bytes | None, *expect: str) -> Case:
    """params.yaml with exactly `content` (None: no params.yaml at all)."""

    def setup(root: Path, assets: Assets) -> list[str]:
        if content is not None:
            (root / "params.yaml").write_bytes(content)
        return stage("download")

    return Case(id, setup, expect)


def folder_case(
    id: str,
    build: Callable[[Path], None],
    *expect: str,
    ok: bool = False,
    changes: dict[str, object] | None = None,
    check=None,
) -> Case:
    """data.dataset: ./photos, a folder of class folders made by `build`, read by `download`."""

    def setup(root: Path, assets: Assets) -> list[str]:
        (root / "photos").mkdir()
        build(root / "photos")
        write_params(root, {"data.dataset": "./photos", **(changes or {})})
        return stage("download")

    return Case(id, setup, expect, ok=ok, check=check)


def prepared_case(
    id: str,
    command: str,
    damage: Callable[[Path, Assets], None],
    *expect: str,
    changes: dict[str, object] | None = None,
) -> Case:
    """A tiny prepared dataset from an earlier run, damaged, then stage `command`."""

    def setup(root: Path, assets: Assets) -> list[str]:
        write_params(root, changes)
        write_prepared(root)
        damage(root, assets)
        return stage(command)

    return Case(id, setup, expect)


def dvc_case(id: str, overrides: list[str], *expect: str, ok: bool = False, check=None) -> Case:
    """`dvc exp run` with `-S` overrides in a copy of the repository, the download stage only."""

    def setup(root: Path, assets: Assets) -> list[str]:
        copy_project(root)
        return ["dvc", "exp", "run", *OFFLINE, *overrides, "download"]

    return Case(id, setup, expect, ok=ok, check=check)


def tlpipe_case(id: str, setup: Setup, *expect: str, check=None) -> Case:
    return Case(id, setup, expect, check=check)


# Folder builders


def with_unreadable_images(photos: Path) -> None:
    two_classes(photos)
    (photos / "cats/zero_bytes.png").write_bytes(b"")
    save_images(photos / "cats", 1, size=(64, 64), seed=9)
    whole = next((photos / "cats").glob("rgb_9_*.png"))
    truncate(whole)  # a half-downloaded PNG
    (photos / "dogs/text.jpg").write_text("not a JPEG at all")


def with_non_image_files(photos: Path) -> None:
    two_classes(photos)
    (photos / "README.md").write_text("my photos")
    (photos / "cats/notes.txt").write_text("x")
    (photos / "cats/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (photos / "dogs/labels.csv").write_text("a,b\n")


def with_mixed_sizes(photos: Path) -> None:
    save_images(photos / "cats", 3, size=(8, 8), seed=1)
    save_images(photos / "dogs", 3, size=(9, 9), seed=2)


def with_grey_rgba_and_palette(photos: Path) -> None:
    for mode, seed in (("L", 1), ("RGBA", 2), ("LA", 3)):
        save_images(photos / "cats", 2, mode=mode, seed=seed)
    for mode, seed in (("P", 4), ("1", 5), ("RGB", 6)):
        save_images(photos / "dogs", 2, mode=mode, seed=seed)


def with_junk_folders(photos: Path) -> None:
    two_classes(photos)
    (photos / "__MACOSX/cats").mkdir(parents=True)
    (photos / "__MACOSX/cats/._rgb_1_0.png").write_bytes(b"\0\5\26\7AppleDouble")
    (photos / ".ipynb_checkpoints").mkdir()
    save_images(photos / "cats/thumbnails", 2, seed=7)  # images one level down are not read
    (photos / "empty_class").mkdir()


def nested_one_level_too_deep(photos: Path) -> None:
    two_classes(photos / "train")


def one_class_only(photos: Path) -> None:
    save_images(photos / "cats", 5)


def one_class_all_unreadable(photos: Path) -> None:
    save_images(photos / "cats", 5)
    (photos / "dogs").mkdir()
    for i in range(3):
        (photos / f"dogs/{i}.jpg").write_bytes(b"")


def raw_shape(shape: tuple[int, ...], classes: list[str], warned: bool):
    def check(root: Path, result: subprocess.CompletedProcess) -> None:
        assert np.load(root / "data/raw/train_images.npy").shape == shape
        assert json.loads((root / "data/raw/classes.json").read_text()) == classes
        assert ("warning:" in result.stderr) == warned

    return check


# Setups for rows that need more than a folder or params


def params_is_a_folder(root: Path, assets: Assets) -> list[str]:
    (root / "params.yaml").mkdir()
    return stage("download")


def dataset_is_a_file(root: Path, assets: Assets) -> list[str]:
    (root / "photos").write_bytes(b"PK\3\4 a zip of photos, not a folder")
    write_params(root, {"data.dataset": "./photos"})
    return stage("download")


def float32_prepared_images(root: Path, assets: Assets) -> None:
    """data/prepared as earlier versions wrote it: normalised float32 images."""
    images = np.load(root / "data/prepared/train_x.npy").astype(np.float32) - 120.0
    np.save(root / "data/prepared/train_x.npy", images)


def truncated_head_features(root: Path, assets: Assets) -> None:
    (root / "data/features/head").mkdir(parents=True)
    np.save(root / "data/features/head/train.npy", np.ones((12, 512), np.float32))
    truncate(root / "data/features/head/train.npy", 0.9)


def val_x_from_another_run(root: Path, assets: Assets) -> None:
    np.save(
        root / "data/prepared/val_x.npy", np.zeros((4, 48, 48, 3), np.uint8)
    )  # prepare.image_size was 48


def head_features_from_another_run(root: Path, assets: Assets) -> None:
    (root / "data/features/head").mkdir(parents=True)
    np.save(
        root / "data/features/head/train.npy", np.ones((7, 512), np.float32)
    )  # data.limit was smaller
    np.save(root / "data/features/head/val.npy", np.ones((4, 512), np.float32))


def garbage_head(root: Path, assets: Assets) -> None:
    (root / "models").mkdir()
    (root / "models/head.keras").write_text("garbage")


def too_few_for_a_stratified_split(root: Path, assets: Assets) -> list[str]:
    save_images(root / "photos/cats", 8, seed=1)
    save_images(root / "photos/dogs", 1, seed=2)
    write_params(root, {"data.dataset": "./photos"})
    run(stage("download"), root)
    return stage("prepare")


def pickled_raw_images(root: Path, assets: Assets) -> list[str]:
    write_params(root)
    write_prepared(root)
    np.save(
        root / "data/raw/train_images.npy", np.array([RunsCode()], dtype=object), allow_pickle=True
    )
    return stage("prepare")


def not_run(root: Path, result: subprocess.CompletedProcess) -> None:
    assert not (root / "PWNED").exists(), "a pickled .npy ran code"


def garbage_head_for_finetune(root: Path, assets: Assets) -> list[str]:
    write_params(root)
    write_prepared(root)
    (root / "data/features").mkdir(parents=True)
    (root / "data/features/backbone.keras").write_bytes(assets.model.read_bytes())
    (root / "models").mkdir()
    (root / "models/head.keras").write_bytes(b"\x89HDF\r\n not a model" * 20)
    return stage("finetune")


def garbage_weights_file(root: Path, assets: Assets) -> list[str]:
    (root / "weights").mkdir()
    (root / "weights/vgg16_notop.h5").write_bytes(b"this is not an HDF5 file" * 100)
    write_params(root, {"backbone.weights": "weights/vgg16_notop.h5"})
    write_prepared(root)
    return stage("features")


def export_before_evaluate(root: Path, assets: Assets) -> list[str]:
    write_params(root)
    write_prepared(root)
    assets.install_model(root)
    return stage("export")


def nothing_exported(root: Path, result: subprocess.CompletedProcess) -> None:
    assert not (root / "models/export").exists(), "the stage exported before checking its inputs"


def predict_without_model(root: Path, assets: Assets) -> list[str]:
    save_images(root / "new", 1)
    return [TLPIPE, "predict", "new"]


def predict_a_missing_path(root: Path, assets: Assets) -> list[str]:
    save_images(root / "new", 1)
    return [TLPIPE, "predict", "new", "no/such/photo.jpg"]


def predict_with_a_broken_image(root: Path, assets: Assets) -> list[str]:
    assets.install_model(root)
    save_images(root / "new", 2, size=(40, 30))
    save_images(root / "new", 1, mode="L", seed=3)
    (root / "new/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated JPEG")
    return [TLPIPE, "predict", "new"]


def others_classified(root: Path, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout
    assert all(re.match(r"new/\S+\.png\t(cats|dogs)\t[01]\.\d{4}$", line) for line in lines), (
        result.stdout
    )


def summary_of_truncated_model(root: Path, assets: Assets) -> list[str]:
    assets.install_model(root)
    truncate(root / "models/model.keras")
    return [TLPIPE, "summary"]


def summary_of_unknown_layer(root: Path, assets: Assets) -> list[str]:
    (root / "models").mkdir()
    with zipfile.ZipFile(root / "models/model.keras", "w") as archive:
        archive.writestr(
            "config.json", json.dumps({"module": "mylib", "class_name": "MyNet", "config": {}})
        )
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    return [TLPIPE, "summary"]


def lr_written_as_string(root: Path, result: subprocess.CompletedProcess) -> None:
    assert re.search(r"^lr: 1e-05$", (root / "params.yaml").read_text(), re.MULTILINE)
    assert (root / "data/raw/train_images.npy").exists()


def downloaded(root: Path, result: subprocess.CompletedProcess) -> None:
    assert "download: digits: 1797 train" in result.stdout


NOT_FOLDER = (
    r"which is not a folder; use a tensorflow-datasets name \(e\.g\. cifar10\), "
    r"'digits', or a folder"
)
RERUN = r"; delete it and run `dvc repro` again$"
CASES = [
    # params.yaml as a file
    params_text_case(
        "yaml-syntax",
        b"seed: 42\nlr: [1e-5\n",
        r"^error: params\.yaml is not valid YAML \(line 3\)",
    ),
    params_text_case(
        "not-utf8",
        b"seed: 42  # caf\xe9\n",
        r"^error: params\.yaml is not UTF-8 text \(byte 0xe9 on line 1\); save it as UTF-8$",
    ),
    params_text_case(
        "no-params-file",
        None,
        r"^error: params\.yaml not found: run the pipeline from the project's top folder$",
    ),
    params_text_case(
        "empty-params-file",
        b"",
        r"^error: params\.yaml: got None; expected a mapping with keys seed, lr, data, ",
    ),
    params_text_case(
        "params-a-list",
        b"- seed\n- lr\n",
        r"^error: params\.yaml: got \['seed', 'lr'\]; expected a mapping with keys seed, lr, ",
    ),
    Case(
        "params-is-a-folder",
        params_is_a_folder,
        (r"^error: params\.yaml cannot be read \(Is a directory\); expected a YAML file$",),
    ),
    # keys and types
    params_case(
        "section-not-a-mapping",
        {"train": 5},
        r"^error: train: got 5; expected a mapping with keys epochs, batch_size, lr, ",
    ),
    params_case(
        "unknown-key",
        {"train.epocs": 3},
        r"^error: train\.epocs: unknown key; "
        r"train allows epochs, batch_size, lr, units, dropout, patience$",
    ),
    params_case(
        "missing-key",
        {"train.patience": DELETE},
        r"^error: train\.patience: missing from params\.yaml$",
    ),
    params_case(
        "string-for-int",
        {"train.epochs": "ten"},
        r"^error: train\.epochs: got 'ten'; expected an integer >= 1$",
    ),
    params_case(
        "float-for-int",
        {"train.units": 2.5},
        r"^error: train\.units: got 2\.5; expected an integer >= 1$",
    ),
    params_case(
        "bool-for-int",
        {"train.batch_size": True},
        r"^error: train\.batch_size: got True; expected an integer >= 1 and <= 4096$",
    ),
    params_case("negative-seed", {"seed": -1}, r"^error: seed: got -1; expected an integer >= 0$"),
    params_case(
        "string-for-float",
        {"lr": "fast"},
        r"^error: lr: got 'fast'; expected a number > 0\.0 and <= 1\.0$",
    ),
    params_case(
        "lr-above-one", {"lr": 5}, r"^error: lr: got 5; expected a number > 0\.0 and <= 1\.0$"
    ),
    params_case(
        "lr-nan",
        {"lr": float("nan")},
        r"^error: lr: got nan; expected a number > 0\.0 and <= 1\.0$",
    ),
    params_case(
        "batch-size-zero",
        {"features.batch_size": 0},
        r"^error: features\.batch_size: got 0; expected an integer >= 1 and <= 4096$",
    ),
    params_case(
        "limit-one",
        {"data.limit": 1},
        r"^error: data\.limit: got 1; expected an integer >= 2 or null$",
    ),
    params_case(
        "augment-not-bool",
        {"finetune.augment": "maybe"},
        r"^error: finetune\.augment: got 'maybe'; expected true or false$",
    ),
    params_case(
        "dropout-one",
        {"train.dropout": 1},
        r"^error: train\.dropout: got 1; expected a number >= 0\.0 and < 1\.0$",
    ),
    # ranges
    params_case(
        "image-size-below-32",
        {"prepare.image_size": 16},
        r"^error: prepare\.image_size: got 16; expected an integer >= 32 and <= 1024$",
    ),
    params_case(
        "data-image-size-below-32",
        {"data.image_size": 8},
        r"^error: data\.image_size: got 8; expected an integer >= 32 or null$",
    ),
    params_case(
        "val-fraction-zero",
        {"prepare.val_fraction": 0},
        r"^error: prepare\.val_fraction: got 0; expected a number > 0\.0 and < 1\.0$",
    ),
    params_case(
        "val-fraction-above-one",
        {"prepare.val_fraction": 1.5},
        r"^error: prepare\.val_fraction: got 1\.5; expected a number > 0\.0 and < 1\.0$",
    ),
    params_case(
        "fractions-sum-to-one",
        {"prepare.val_fraction": 0.5, "prepare.test_fraction": 0.5},
        r"^error: prepare\.val_fraction \+ prepare\.test_fraction: "
        r"got 0\.5 \+ 0\.5; their sum must be below 1",
    ),
    params_case(
        "unknown-backbone",
        {"backbone.name": "vgg19"},
        r"^error: backbone\.name: got 'vgg19'; "
        r"expected one of vgg16, resnet50, efficientnetb0, densenet121, mobilenetv2$",
    ),
    # files params.yaml points at
    params_case(
        "weights-file-missing",
        {"backbone.weights": "weights/vgg16_notop.h5"},
        r"^error: backbone\.weights: got 'weights/vgg16_notop\.h5'; "
        r"expected imagenet, none, or the path of an existing \.h5 weights file$",
    ),
    params_case(
        "dataset-folder-missing",
        {"data.dataset": "./photos"},
        rf"^error: data\.dataset: got './photos', {NOT_FOLDER}",
    ),
    params_case(
        "dataset-empty-string",
        {"data.dataset": " "},
        r"^error: data\.dataset: got ' '; expected a non-empty string$",
    ),
    Case(
        "dataset-is-a-file",
        dataset_is_a_file,
        (rf"^error: data\.dataset: got './photos', {NOT_FOLDER}",),
    ),
    # numbers as strings (what `dvc exp run -S lr=1e-05` writes) are accepted
    params_case(
        "numbers-as-strings-accepted",
        {"lr": "1e-05", "train.lr": "1e-3", "train.epochs": "3"},
        ok=True,
        check=downloaded,
    ),
    # image folders
    folder_case(
        "unreadable-images-skipped",
        with_unreadable_images,
        r"^warning: skipped 3 unreadable image file\(s\), e\.g\. photos/",
        ok=True,
        check=raw_shape((10, 8, 8, 3), ["cats", "dogs"], warned=True),
    ),
    folder_case(
        "non-image-files-ignored",
        with_non_image_files,
        ok=True,
        check=raw_shape((10, 8, 8, 3), ["cats", "dogs"], warned=False),
    ),
    folder_case(
        "grey-rgba-palette-converted",
        with_grey_rgba_and_palette,
        ok=True,
        check=raw_shape((12, 8, 8, 3), ["cats", "dogs"], warned=False),
    ),
    folder_case(
        "junk-folders-ignored",
        with_junk_folders,
        ok=True,
        check=raw_shape((10, 8, 8, 3), ["cats", "dogs"], warned=False),
    ),
    folder_case(
        "mixed-sizes",
        with_mixed_sizes,
        r"^error: data\.image_size: images in photos differ in size \(8x8, 9x9, \.\.\.\); "
        r"set data\.image_size \(e\.g\. 150\) to resize them while reading$",
    ),
    folder_case(
        "mixed-sizes-resized",
        with_mixed_sizes,
        ok=True,
        changes={"data.image_size": 32},
        check=raw_shape((6, 32, 32, 3), ["cats", "dogs"], warned=False),
    ),
    folder_case(
        "empty-folder",
        lambda photos: None,
        r"^error: data\.dataset: photos has 0 class folder\(s\) with readable images; "
        r"expected at least 2 sub-folders of JPEG/PNG images, one per class$",
    ),
    folder_case(
        "classes-nested-too-deep",
        nested_one_level_too_deep,
        r"^error: data\.dataset: photos has 0 class folder\(s\) with readable images; "
        r"expected at least 2 ",
    ),
    folder_case(
        "one-class",
        one_class_only,
        r"^error: data\.dataset: photos has 1 class folder\(s\) with readable images; "
        r"expected at least 2 ",
    ),
    folder_case(
        "one-class-all-unreadable",
        one_class_all_unreadable,
        r"^warning: skipped 3 unreadable image file\(s\)",
        r"^error: data\.dataset: photos has 1 class folder\(s\) with readable images",
    ),
    Case(
        "too-few-for-stratified-split",
        too_few_for_a_stratified_split,
        (
            r"^error: prepare\.test_fraction: cannot hold out a stratified test split of 0\.2 "
            r"from 9 images \(smallest class has 1\): .*Use more images per class",
        ),
    ),
    # files left over from an earlier run
    prepared_case(
        "float32-prepared-x-of-an-earlier-version",
        "features",
        float32_prepared_images,
        r"^error: data/prepared/train_x\.npy holds float32 images, written by an earlier version "
        r"of the pipeline; expected uint8 pixels: run `dvc repro` to rebuild it$",
    ),
    prepared_case(
        "truncated-prepared-x",
        "features",
        lambda root, assets: truncate(root / "data/prepared/train_x.npy"),
        rf"^error: data/prepared/train_x\.npy is corrupt or truncated "
        rf"\(mmap length is greater than file size\){RERUN}",
    ),
    prepared_case(
        "empty-prepared-x",
        "features",
        lambda root, assets: (root / "data/prepared/val_x.npy").write_bytes(b""),
        rf"^error: data/prepared/val_x\.npy is corrupt or truncated \(the file is empty\){RERUN}",
    ),
    prepared_case(
        "truncated-head-features",
        "train",
        truncated_head_features,
        r"^error: data/features/head/train\.npy is corrupt or truncated "
        r"\(mmap length is greater than file size\)" + RERUN,
    ),
    prepared_case(
        "prepared-splits-differ-in-size",
        "features",
        val_x_from_another_run,
        r"^error: data/prepared/val_x\.npy: got images of shape \(48, 48, 3\) "
        r"\(train_x: \(32, 32, 3\)\); "
        rf"expected \(size, size, 3\), the same in every split: left by another run\?{RERUN[1:]}",
    ),
    prepared_case(
        "features-and-labels-from-different-runs",
        "train",
        head_features_from_another_run,
        r"^error: inputs from different runs: data/features/head/train\.npy has 7 rows, "
        r"data/prepared/train_y\.npy "
        r"has 12 rows; expected the same number in each: run `dvc repro` to rebuild them$",
    ),
    Case(
        "pickled-npy-refused",
        pickled_raw_images,
        (
            rf"^error: data/raw/train_images\.npy is corrupt or truncated "
            rf"\(it holds pickled Python objects, which are never loaded: they could run code\)"
            rf"{RERUN}",
        ),
        check=not_run,
    ),
    prepared_case(
        "garbage-head-evaluate",
        "evaluate",
        garbage_head,
        rf"^error: models/head\.keras is not a usable Keras model "
        rf"\(not a \.keras zip archive: empty, truncated or overwritten\){RERUN}",
    ),
    Case(
        "garbage-head-finetune",
        garbage_head_for_finetune,
        (
            rf"^error: models/head\.keras is not a usable Keras model "
            rf"\(not a \.keras zip archive: empty, truncated or overwritten\){RERUN}",
        ),
    ),
    prepared_case(
        "unfreeze-from-no-layer",
        "features",
        lambda root, assets: None,
        r"^error: finetune\.unfreeze_from: got 'block9_conv1', which is not a layer of vgg16; "
        r"expected auto or one of its layers, e\.g\. block\d_\w+, ",
        changes={"finetune.unfreeze_from": "block9_conv1"},
    ),
    Case(
        "weights-file-not-hdf5",
        garbage_weights_file,
        (
            r"^error: backbone\.weights: weights/vgg16_notop\.h5 "
            r"does not hold vgg16 weights without the top \(.+\)$",
        ),
    ),
    Case(
        "export-before-evaluate",
        export_before_evaluate,
        (r"^error: metrics/evaluate\.json is missing: run `dvc repro` to create it$",),
        check=nothing_exported,
    ),
    # tlpipe
    tlpipe_case(
        "predict-without-model",
        predict_without_model,
        r"^error: no model at models/model\.keras \(looked in /.+/models\): run `dvc repro` in the "
        r"project's folder, or pass --model PATH to a model\.keras that finetune wrote$",
    ),
    tlpipe_case(
        "predict-a-missing-path",
        predict_a_missing_path,
        r"^error: no such file or folder: no/such/photo\.jpg$",
    ),
    tlpipe_case(
        "predict-broken-image-among-good",
        predict_with_a_broken_image,
        r"^error: new/broken\.jpg: not a readable image \(.+\)$",
        check=others_classified,
    ),
    tlpipe_case(
        "summary-truncated-model",
        summary_of_truncated_model,
        rf"^error: models/model\.keras is not a usable Keras model "
        rf"\(not a \.keras zip archive: empty, truncated or overwritten\){RERUN}",
    ),
    tlpipe_case(
        "summary-unknown-layer-class",
        summary_of_unknown_layer,
        rf"^error: models/model\.keras is not a usable Keras model "
        rf"\(Could not locate class 'MyNet'\..*\){RERUN}",
    ),
    # dvc exp run -S
    dvc_case("dvc-lr-string-accepted", ["-S", "lr=1e-05"], ok=True, check=lr_written_as_string),
    dvc_case(
        "dvc-string-for-int",
        ["-S", "train.epochs=ten"],
        r"^error: train\.epochs: got 'ten'; expected an integer >= 1$",
    ),
    dvc_case(
        "dvc-appended-unknown-key",
        ["-S", "+train.epocs=3"],
        r"^error: train\.epocs: unknown key; train allows epochs, ",
    ),
]


Outcome = tuple[Path, list[str], subprocess.CompletedProcess]  # folder, command, what it did


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Future[Outcome]]:
    """Every selected row run up front, WORKERS at a time: each costs mostly a Python start-up."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if isinstance(getattr(item, "callspec", None) and item.callspec.params.get("case"), Case)
    ]
    assets = Assets(tmp_path_factory.mktemp("assets"))
    folders = {case.id: tmp_path_factory.mktemp(case.id) for case in selected}

    def execute(case: Case) -> Outcome:
        command = case.setup(folders[case.id], assets)
        return folders[case.id], command, run(command, folders[case.id], check=False, timeout=300)

    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="bad-input")
    try:
        yield {case.id: pool.submit(execute, case) for case in selected}
    finally:
        pool.shutdown(cancel_futures=True)


def test_the_table_has_distinct_rows():
    assert len({case.id for case in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input(case: Case, outcomes: dict[str, Future[Outcome]]):
    root, command, result = outcomes[case.id].result()
    shown = f"{' '.join(command)} -> exit {result.returncode}\n{result.output[-3000:]}"
    assert "Traceback" not in result.stderr, shown
    if case.ok:
        assert result.returncode == 0, shown
        assert not re.search(r"^(error|ERROR):", result.stderr, re.MULTILINE), shown
    else:
        assert result.returncode != 0, shown
    for pattern in case.expect:
        assert re.search(pattern, result.stderr, re.MULTILINE), (
            f"stderr does not match {pattern!r}:\n{shown}"
        )
    if case.check is not None:
        case.check(root, result)
