"""Bad inputs through the real entry points: a non-zero exit and one line naming the problem.

One table: every row writes its inputs into an empty project folder (params.yaml, image folders,
files "left over from an earlier run") and names the command to run there: a stage
(`python -m stages.<name>`), `tlpipe`, or `dvc exp run -S ...` in a copy of the repository. Every
rejected input must exit non-zero with stderr naming the key or file, what was wrong and what is
allowed, and never a Python traceback. A few rows are inputs that must be *accepted* (numbers
given as strings, unreadable images that are skipped with a counted warning, grey/RGBA images).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import project
from tests.helpers import OFFLINE, REPO, SHIPPED_PARAMS, VENV_BIN, copy_project, run
from tests.project import DELETE

OFFLINE_CONFIG = {"data.dataset": "digits", "backbone.weights": "none"}

SPLITS = ("train", "val", "test")
PYTHON = str(VENV_BIN / "python")
TLPIPE = str(VENV_BIN / "tlpipe")
WORKERS = max(2, min(4, os.cpu_count() or 2))  # rows run concurrently, each in its own folder
# Generous: a refusal takes a Python start-up, 1-3 s; `tlpipe predict` loads TensorFlow (30 s
# with the table's rows running 4 at a time on 2 cores).
BOUND_SECONDS = 120
BOUND_RSS = 1.5e9  # bytes; TensorFlow alone takes about 0.5 GB
# Runs a command and writes the peak RSS (kB) of it and its descendants to argv[1].
MEASURED = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(str(peak))\n"
    "sys.exit(code)\n"
)


# --- building inputs -----------------------------------------------------------------------------


PHOTOS = {"data.dataset": "folder", "data.folder": "./photos"}


def write_params(root: Path, changes: dict[str, object] | None = None) -> None:
    """The project's params.yaml on the offline config, with `changes` ({"train.epochs": 3},
    or DELETE to remove a key) applied."""
    project.write_params(root, {**OFFLINE_CONFIG, **(changes or {})})


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
            "from tlpipe.compute.archives import save_model\n"
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
    # An untrusted file: the command must also stay within BOUND_SECONDS and BOUND_RSS and, if it
    # refuses, leave every file under data/, models/ and metrics/ as it found it.
    bounded: bool = False


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
    command: str = "download",
) -> Case:
    """data.folder: ./photos, a folder of class folders made by `build`, read by `download`
    (or looked at by `command`)."""

    def setup(root: Path, assets: Assets) -> list[str]:
        (root / "photos").mkdir()
        build(root / "photos")
        write_params(root, {**PHOTOS, **(changes or {})})
        return stage(command)

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


def save_grey16(path: Path, seed: int, step: int = 1040) -> None:
    """A 16-bit greyscale PNG (Pillow mode I;16): a gradient of 64 steps of `step` (by default
    over 0..65535), offset by `seed`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient = (np.arange(64).reshape(8, 8) * step + seed).astype(np.uint16)
    Image.fromarray(gradient).save(path)


def with_16_bit_grey(photos: Path) -> None:
    for i in range(3):
        save_grey16(photos / f"cats/{i}.png", i)
        save_grey16(photos / f"dogs/{i}.png", i + 3)


def grey16_scaled(root: Path, result: subprocess.CompletedProcess) -> None:
    """Scaled to 8 bits (65535 -> 255), not clipped: convert("RGB") made 99.6 % of them 255."""
    images = np.load(root / "data/raw/train_images.npy")
    assert images.shape == (6, 8, 8, 3)
    expected = np.round(np.arange(64).reshape(8, 8) * 1040 * 255 / 65535)
    assert np.array_equal(images[0, ..., 0], expected), images[0, ..., 0]
    assert (images == 255).mean() < 0.05


def with_an_empty_class(photos: Path) -> None:
    two_classes(photos)
    (photos / "birds").mkdir()


def with_class_named(name: str) -> Callable[[Path], None]:
    def build(photos: Path) -> None:
        two_classes(photos)
        save_images(photos / name, 3, seed=3)

    return build


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
    write_params(root, PHOTOS)
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
    write_params(root, PHOTOS)
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
    """Refused by params validation, so in the first stage: not after download and prepare."""
    (root / "weights").mkdir()
    (root / "weights/vgg16_notop.h5").write_bytes(b"this is not an HDF5 file" * 100)
    write_params(root, {"backbone.weights": "weights/vgg16_notop.h5"})
    write_prepared(root)
    return stage("download")


def other_hdf5_as_weights(root: Path, assets: Assets) -> list[str]:
    """An HDF5 file, but not VGG16's weights: only building the model finds that out."""
    import h5py

    (root / "weights").mkdir()
    with h5py.File(root / "weights/vgg16_notop.h5", "w") as file:
        file["numbers"] = np.arange(10)
    write_params(root, {"backbone.weights": "weights/vgg16_notop.h5"})
    write_prepared(root)
    return stage("features")


def export_before_evaluate(root: Path, assets: Assets) -> list[str]:
    write_params(root, {"export.calibration_images": 5})  # within the 12 training images
    write_prepared(root)
    assets.install_model(root)
    return stage("export")


def calibration_beyond_the_training_split(root: Path, assets: Assets) -> list[str]:
    write_params(root, {"export.calibration_images": 100000})
    write_prepared(root)
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


def predict_16_bit_and_8_bit_grey(root: Path, assets: Assets) -> list[str]:
    """The same dark gradient (0..1008 of 65535: 8-bit 0..4, which the tiny model does not
    saturate on) as a 16-bit and as an 8-bit greyscale PNG, and a white one: what clipping the
    16-bit one would nearly give."""
    assets.install_model(root)
    save_grey16(root / "new/a16.png", 0, step=16)
    wide = np.asarray(Image.open(root / "new/a16.png"), dtype=np.float64)
    Image.fromarray(np.round(wide * 255 / 65535).astype(np.uint8)).save(root / "new/b8.png")
    Image.new("L", (8, 8), 255).save(root / "new/c_white.png")
    return [TLPIPE, "predict", "--json", "new"]


def same_as_8_bit(root: Path, result: subprocess.CompletedProcess) -> None:
    sixteen, eight, white = [row["predictions"] for row in json.loads(result.stdout)]
    assert sixteen == eight, result.stdout
    assert eight != white, "the model cannot tell the gradient from white: the test proves nothing"


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


NOT_FOLDER = r"which is not a folder; with data\.dataset: folder it must be a folder"
RERUN = r"; delete it and run `dvc repro` again$"
# --- untrusted files: declared sizes, archives, nesting, links -----------------------------------
# Each row must be refused in one line naming the file and the limit (or, for one image among
# good ones, skipped with a counted warning) within BOUND_SECONDS and BOUND_RSS, losing nothing.


def written_files(root: Path) -> dict[str, str]:
    """{path: sha256} of every file under data/, models/ and metrics/ (what a run writes)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in ("data", "models", "metrics")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int, height: int, *, real_pixels: bool) -> None:
    """An RGBA PNG declaring width x height: with `real_pixels`, every (zero) row compressed
    (a 12000 x 12000 image is 0.6 GB decoded from 0.6 MB); otherwise the header alone."""
    compressor = zlib.compressobj(9)
    rows = b""
    if real_pixels:
        chunk = b"\0" * ((4 * width + 1) * 500)  # 500 rows: filter byte + pixels each
        parts = [compressor.compress(chunk) for _ in range(height // 500)]
        rows = b"".join(parts) + compressor.flush()
    else:
        rows = zlib.compress(b"\0" * 64)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def write_jpeg_declaring(path: Path, width: int, height: int) -> None:
    """A real 8x8 JPEG whose frame header (SOF0) is edited to declare width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


def with_png_header_bomb(photos: Path) -> None:
    two_classes(photos)
    write_png_bomb(photos / "cats/bomb.png", 100_000, 100_000, real_pixels=False)


def with_png_pixel_bomb(photos: Path) -> None:
    two_classes(photos)
    write_png_bomb(photos / "dogs/bomb.png", 12_000, 12_000, real_pixels=True)


def with_jpeg_header_bomb(photos: Path) -> None:
    two_classes(photos)
    write_jpeg_declaring(photos / "cats/bomb.jpg", 65_000, 65_000)


def with_link_loop(photos: Path) -> None:
    two_classes(photos)
    (photos / "birds").symlink_to("fish")
    (photos / "fish").symlink_to("birds")


def with_image_linked_from_outside(photos: Path) -> None:
    two_classes(photos)
    save_images(photos.parent / "private", 1, seed=5)
    (photos / "cats/holiday.png").symlink_to(next((photos.parent / "private").iterdir()))


def with_class_linked_from_outside(photos: Path) -> None:
    two_classes(photos)
    save_images(photos.parent / "elsewhere", 3, seed=5)
    (photos / "birds").symlink_to(photos.parent / "elsewhere")


def with_links_inside(photos: Path) -> None:
    two_classes(photos)
    (photos / "kittens").symlink_to("cats")
    (photos / "dogs/copy.png").symlink_to(next((photos / "dogs").glob("*.png")))


def links_recorded(root: Path, result: subprocess.CompletedProcess) -> None:
    """check's record of the links inside photos/, which download depends on."""
    links = json.loads((root / "data/folder_links.json").read_text())
    assert links.keys() == {"kittens", "dogs/copy.png"}, links
    assert links["kittens"] == "cats" and re.match(r"dogs/rgb_2_\d\.png$", links["dogs/copy.png"])


def untrusted_folder_case(
    id: str, build: Callable[[Path], None], *expect: str, ok: bool = False, check=None
) -> Case:
    """`download` of ./photos made by `build`, over the data/raw/ of an earlier good run."""

    def setup(root: Path, assets: Assets) -> list[str]:
        (root / "photos").mkdir()
        build(root / "photos")
        write_params(root, PHOTOS)
        write_prepared(root)
        return stage("download")

    return Case(id, setup, expect, ok=ok, check=check, bounded=True)


def untrusted_file_case(
    id: str, command: str, damage: Callable[[Path], None], *expect: str
) -> Case:
    """A tiny earlier run's outputs, one file replaced by `damage`, then stage `command`."""

    def setup(root: Path, assets: Assets) -> list[str]:
        write_params(root)
        write_prepared(root)
        damage(root)
        return stage(command)

    return Case(id, setup, expect, bounded=True)


def untrusted_params_case(id: str, write: Callable[[Path], None], *expect: str) -> Case:
    """params.yaml written by `write`, over an earlier run's outputs; then `download`."""

    def setup(root: Path, assets: Assets) -> list[str]:
        write_prepared(root)
        write(root / "params.yaml")
        return stage("download")

    return Case(id, setup, expect, bounded=True)


def tlpipe_untrusted_case(
    id: str, setup: Setup, *expect: str, ok: bool = False, check=None
) -> Case:
    return Case(id, setup, expect, ok=ok, check=check, bounded=True)


def write_npy_header(path: Path, header: str, *, data: bytes = b"", version: int = 1) -> None:
    """A .npy file with exactly this header text (and `data` after it)."""
    body = (header + " " * (64 - (len(header) + 12) % 64) + "\n").encode("latin1")
    length = struct.pack("<H", len(body)) if version == 1 else struct.pack("<I", len(body))
    path.write_bytes(b"\x93NUMPY" + bytes([version, 0]) + length + body + data)


def labels_of_huge_shape(root: Path) -> None:
    shape = "{'descr': '<i8', 'fortran_order': False, 'shape': (1000000000000,), }"
    write_npy_header(root / "data/raw/train_labels.npy", shape, data=b"\0" * 64)


def labels_of_huge_items(root: Path) -> None:
    header = "{'descr': [('a', '<f8', (100000000,))], 'fortran_order': False, 'shape': (20,), }"
    write_npy_header(root / "data/raw/train_labels.npy", header, data=b"\0" * 64)


def images_with_huge_header(root: Path) -> None:
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (12, 8, 8, 1), }"
    write_npy_header(
        root / "data/raw/train_images.npy", header + " " * 1_000_000, data=b"\0" * 768, version=2
    )


def images_with_nested_header(root: Path) -> None:
    shape = "(" * 3000 + "12," + ")" * 3000
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': " + shape + ", }"
    write_npy_header(root / "data/raw/train_images.npy", header, data=b"\0" * 768)


def classes_nested_deep(root: Path) -> None:
    (root / "data/raw/classes.json").write_text("[" * 100_000 + "]" * 100_000)


def classes_huge(root: Path) -> None:
    with open(root / "data/raw/classes.json", "wb") as file:
        file.truncate(3 * 2**30)  # sparse: 3 GB that take no disk


def billion_laughs(path: Path) -> None:
    text = SHIPPED_PARAMS.replace("\nseed: 42", "\nseed: *i")
    laughs = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        laughs.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    assert "seed: *i" in text
    path.write_text("\n".join(laughs) + "\n" + text)


def params_nested_deep(path: Path) -> None:
    path.write_text("seed: " + "[" * 20_000 + "]" * 20_000 + "\n")


def params_huge(path: Path) -> None:
    with open(path, "wb") as file:
        file.write(SHIPPED_PARAMS.encode())
        file.truncate(2 * 2**30)  # sparse


def keras_archive(path: Path, members: dict[str, bytes], *, bomb: tuple[str, int] | None = None):
    """A .keras zip with `members`, plus `bomb`: (name, bytes of spaces or zeros, deflated)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if bomb is not None:
            name, size = bomb
            filler = (b" " if name.endswith(".json") else b"\0") * 2**24
            with archive.open(name, "w", force_zip64=True) as member:
                for _ in range(size // len(filler)):
                    member.write(filler)


def model_members(model: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(model) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def summary_of(build: Callable[[Path, dict[str, bytes]], None]) -> Setup:
    """`tlpipe summary` of a models/model.keras made by build(path, a real model's members)."""

    def setup(root: Path, assets: Assets) -> list[str]:
        assets.install_model(root)
        members = model_members(root / "models/model.keras")
        build(root / "models/model.keras", members)
        return [TLPIPE, "summary"]

    return setup


def config_bomb(path: Path, members: dict[str, bytes]) -> None:
    del members["config.json"]
    keras_archive(path, members, bomb=("config.json", 2**30))


def weights_bomb(path: Path, members: dict[str, bytes]) -> None:
    del members["model.weights.h5"]
    keras_archive(path, members, bomb=("model.weights.h5", 1200 * 2**20))


def member_escaping(name: str) -> Callable[[Path, dict[str, bytes]], None]:
    def build(path: Path, members: dict[str, bytes]) -> None:
        keras_archive(path, {**members, name: b"written outside the project"})

    return build


def config_nested_deep(path: Path, members: dict[str, bytes]) -> None:
    members["config.json"] = b'{"module": "keras", "config": ' + b"[" * 100_000 + b"]" * 100_000
    members["config.json"] += b"}"
    keras_archive(path, members)


def tfds_archive_not_official(root: Path, assets: Assets) -> list[str]:
    """A cifar-10-binary.tar.gz placed for tensorflow-datasets, holding a member with ../ ."""
    manual = root / "tfds/downloads/manual"
    manual.mkdir(parents=True)
    with tarfile.open(manual / "cifar-10-binary.tar.gz", "w:gz") as archive:
        member = tarfile.TarInfo("../../../../escaped.txt")
        member.size = 7
        archive.addfile(member, io.BytesIO(b"escaped"))
    write_params(root, {"data.dataset": "cifar10:3.0.2"})
    write_prepared(root)
    return ["env", f"TFDS_DATA_DIR={root / 'tfds'}", *stage("download")]


def predict_a_bomb_among_good(bomb: Callable[[Path], None]) -> Setup:
    def setup(root: Path, assets: Assets) -> list[str]:
        assets.install_model(root)
        save_images(root / "new", 3, size=(40, 30))
        bomb(root / "new/zz_bomb.png")
        return [TLPIPE, "predict", "new"]

    return setup


def predict_json_of(write: Callable[[Path], None]) -> Setup:
    def setup(root: Path, assets: Assets) -> list[str]:
        assets.install_model(root)
        write(root / "models/model.json")
        save_images(root / "new", 1)
        return [TLPIPE, "predict", "new"]

    return setup


def predict_through_a_link_loop(root: Path, assets: Assets) -> list[str]:
    assets.install_model(root)
    save_images(root / "new", 3)
    (root / "new/again").symlink_to(".")
    (root / "new/sub").mkdir()
    (root / "new/sub/up").symlink_to("..")
    return [TLPIPE, "predict", "new"]


def classified_once_each(root: Path, result: subprocess.CompletedProcess) -> None:
    assert len(result.stdout.strip().splitlines()) == 3, result.stdout


def nothing_escaped(root: Path, result: subprocess.CompletedProcess) -> None:
    escaped = [*root.glob("escaped*"), *root.parent.glob("escaped*")]
    assert not escaped, "an archive member was written outside where it belongs"


IMAGE_LIMIT = r"the limit is 67108864 \(MAX_IMAGE_PIXELS, 8192x8192\)"
UNTRUSTED = [
    untrusted_folder_case(
        "png-declaring-100000x100000-skipped",
        with_png_header_bomb,
        r"^warning: skipped 1 image file\(s\) over the size limit, e\.g\. photos/cats/bomb\.png "
        rf"\(it declares 10000000000 pixels; {IMAGE_LIMIT}\)$",
        ok=True,
        check=raw_shape((10, 8, 8, 3), ["cats", "dogs"], warned=True),
    ),
    untrusted_folder_case(
        "png-decompressing-to-0.6-GB-skipped",
        with_png_pixel_bomb,
        r"^warning: skipped 1 image file\(s\) over the size limit, e\.g\. photos/dogs/bomb\.png "
        rf"\(it declares 12000x12000 = 144000000 pixels; {IMAGE_LIMIT}\)$",
        ok=True,
        check=raw_shape((10, 8, 8, 3), ["cats", "dogs"], warned=True),
    ),
    untrusted_folder_case(
        "jpeg-declaring-65000x65000-skipped",
        with_jpeg_header_bomb,
        r"^warning: skipped 1 image file\(s\) over the size limit, e\.g\. photos/cats/bomb\.jpg "
        rf"\(it declares 4225000000 pixels; {IMAGE_LIMIT}\)$",
        ok=True,
        check=raw_shape((10, 8, 8, 3), ["cats", "dogs"], warned=True),
    ),
    untrusted_folder_case(
        "folder-link-loop",
        with_link_loop,
        r"^error: data\.dataset: photos/(birds|fish) is a link that loops or leads nowhere; "
        r"class folders and images must be files or folders inside photos",
    ),
    untrusted_folder_case(
        "folder-image-linked-from-outside",
        with_image_linked_from_outside,
        r"^error: data\.dataset: photos/cats/holiday\.png links to /\S+/private/\S+\.png, "
        r"outside photos; class folders and images must be inside photos",
    ),
    untrusted_folder_case(
        "folder-class-linked-from-outside",
        with_class_linked_from_outside,
        r"^error: data\.dataset: photos/birds links to /\S+/elsewhere, outside photos",
    ),
    untrusted_folder_case(
        "folder-links-inside-followed",
        with_links_inside,
        ok=True,
        check=raw_shape((16, 8, 8, 3), ["cats", "dogs", "kittens"], warned=False),
    ),
    untrusted_file_case(
        "npy-declaring-8-TB",
        "prepare",
        labels_of_huge_shape,
        r"^error: data/raw/train_labels\.npy is corrupt or truncated \(its header declares "
        r"8\.0 TB of data, shape \(1000000000000,\) of int64, but the file holds 64 bytes\)"
        + RERUN,
    ),
    untrusted_file_case(
        "npy-items-of-800-MB",
        "prepare",
        labels_of_huge_items,
        r"^error: data/raw/train_labels\.npy is corrupt or truncated \(its header declares "
        r"16\.0 GB of data, shape \(20,\) of .+, but the file holds 64 bytes\)",
    ),
    untrusted_file_case(
        "npy-header-of-1-MB",
        "prepare",
        images_with_huge_header,
        r"^error: data/raw/train_images\.npy has a 1000\d\d\d-byte header; the limit is 10000 "
        rf"bytes \(MAX_NPY_HEADER_BYTES\), so it was not written by the pipeline{RERUN}",
    ),
    untrusted_file_case(
        "npy-header-nested-3000-deep",
        "prepare",
        images_with_nested_header,
        r"^error: data/raw/train_images\.npy is corrupt or truncated "
        rf"\(its header cannot be parsed\){RERUN}",
    ),
    untrusted_file_case(
        "json-nested-100000-deep",
        "prepare",
        classes_nested_deep,
        r"^error: data/raw/classes\.json nests deeper than 32 levels \(MAX_JSON_DEPTH\)",
    ),
    untrusted_file_case(
        "json-of-3-GB",
        "prepare",
        classes_huge,
        r"^error: data/raw/classes\.json is 3\.2 GB; the limit for the JSON files the pipeline "
        rf"reads is 10\.5 MB \(MAX_JSON_BYTES\){RERUN}",
    ),
    untrusted_params_case(
        "params-billion-laughs",
        billion_laughs,
        r"^error: params\.yaml uses a YAML alias \(\*a, line 2\); params\.yaml allows none, "
        r"since aliases can expand exponentially: write the value out$",
    ),
    untrusted_params_case(
        "params-nested-20000-deep",
        params_nested_deep,
        r"^error: params\.yaml nests deeper than 16 levels \(line 1\); "
        r"the limit is MAX_PARAMS_DEPTH",
    ),
    untrusted_params_case(
        "params-of-2-GB",
        params_huge,
        r"^error: params\.yaml is 2147483648 bytes; the limit is 1048576 \(MAX_PARAMS_BYTES\)$",
    ),
    Case(
        "tfds-archive-not-official",
        tfds_archive_not_official,
        (
            r"^error: an archive in /\S+/tfds/downloads/manual/ does not match the checksum "
            r"tensorflow-datasets records for cifar10; it was not unpacked: replace it with the "
            r"official file$",
        ),
        check=nothing_escaped,
        bounded=True,
    ),
    tlpipe_untrusted_case(
        "keras-config-zip-bomb",
        summary_of(config_bomb),
        r"^error: models/model\.keras is not a usable Keras model \(config\.json unpacks to "
        r"1\.1 GB from [\d.]+ MB; the limit is 16\.8 MB \(MAX_MODEL_JSON_BYTES\)\)" + RERUN,
    ),
    tlpipe_untrusted_case(
        "keras-weights-zip-bomb",
        summary_of(weights_bomb),
        r"^error: models/model\.keras is not a usable Keras model \(model\.weights\.h5 unpacks "
        r"to 1\.3 GB from [\d.]+ MB: a zip bomb\? the limit is 100 times \(MAX_ZIP_RATIO\)\)",
    ),
    tlpipe_untrusted_case(
        "keras-member-with-dotdot",
        summary_of(member_escaping("../../escaped.txt")),
        r"^error: models/model\.keras is not a usable Keras model \(it holds '\.\./\.\./escaped"
        r"\.txt'; a pipeline model holds only config\.json, metadata\.json, model\.weights\.h5\)",
        check=nothing_escaped,
    ),
    tlpipe_untrusted_case(
        "keras-member-absolute",
        summary_of(member_escaping("/tmp/escaped-by-tlpipe.txt")),
        r"^error: models/model\.keras is not a usable Keras model \(it holds "
        r"'/tmp/escaped-by-tlpipe\.txt'; a pipeline model holds only ",
    ),
    tlpipe_untrusted_case(
        "keras-config-nested-100000-deep",
        summary_of(config_nested_deep),
        r"^error: models/model\.keras/config\.json nests deeper than 64 levels "
        r"\(MAX_MODEL_DEPTH\)",
    ),
    tlpipe_untrusted_case(
        "predict-png-declaring-100000x100000",
        predict_a_bomb_among_good(
            lambda path: write_png_bomb(path, 100_000, 100_000, real_pixels=False)
        ),
        rf"^error: new/zz_bomb\.png: not a readable image \(it declares 10000000000 pixels; "
        rf"{IMAGE_LIMIT}\)$",
        check=others_classified,
    ),
    tlpipe_untrusted_case(
        "predict-png-decompressing-to-0.6-GB",
        predict_a_bomb_among_good(
            lambda path: write_png_bomb(path, 12_000, 12_000, real_pixels=True)
        ),
        rf"^error: new/zz_bomb\.png: not a readable image \(it declares 12000x12000 = "
        rf"144000000 pixels; {IMAGE_LIMIT}\)$",
        check=others_classified,
    ),
    tlpipe_untrusted_case(
        "predict-model-json-nested-100000-deep",
        predict_json_of(lambda path: path.write_text("[" * 100_000 + "]" * 100_000)),
        r"^error: models/model\.json nests deeper than 32 levels \(MAX_JSON_DEPTH\)",
    ),
    tlpipe_untrusted_case(
        "predict-through-a-link-loop",
        predict_through_a_link_loop,
        ok=True,
        check=classified_once_each,
    ),
]


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
        r"^error: params\.yaml: got None; expected a mapping with keys seed, lr, threads, data, ",
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
        r"train allows epochs, batch_size, lr, units, dropout, patience, replicas$",
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
        "calibrate-unknown",
        {"finetune.calibrate": "platt"},
        r"^error: finetune\.calibrate: got 'platt'; expected one of temperature, none$",
    ),
    params_case(
        "export-format-unknown",
        {"export.formats": ["onnx", "tensorrt"]},
        r"^error: export\.formats: got \['onnx', 'tensorrt'\]; expected a list whose items are "
        r"each one of saved_model, litert, litert_float16, litert_int8, onnx, onnx_int8$",
    ),
    params_case(
        "export-formats-empty",
        {"export.formats": []},
        r"^error: export\.formats: got \[\], an empty list; name one or more of saved_model, ",
    ),
    params_case(
        "export-format-twice",
        {"export.formats": ["onnx", "litert", "onnx"]},
        r"^error: export\.formats: got \['onnx', 'litert', 'onnx'\]; onnx listed more than once$",
    ),
    params_case(
        "tta-unknown",
        {"evaluate.tta": "rotate"},
        r"^error: evaluate\.tta: got 'rotate'; expected one of none, flip$",
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
        PHOTOS,
        rf"^error: data\.folder: got './photos', {NOT_FOLDER}",
    ),
    params_case(
        "dataset-a-folder-path",
        {"data.dataset": "./photos"},
        r"^error: data\.dataset: got './photos', a folder; set data\.dataset: folder and "
        r"data\.folder: \./photos \(download then depends on the folder's contents",
    ),
    params_case(
        "dataset-empty-string",
        {"data.dataset": " "},
        r"^error: data\.dataset: got ' '; expected a non-empty string$",
    ),
    Case(
        "dataset-is-a-file",
        dataset_is_a_file,
        (rf"^error: data\.folder: got './photos', {NOT_FOLDER}",),
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
        "16-bit-grey-scaled-to-8-bits",
        with_16_bit_grey,
        ok=True,
        check=grey16_scaled,
    ),
    folder_case(
        "junk-folders-ignored",
        with_junk_folders,
        r"^warning: left out 2 class folder\(s\) without a readable image, so not classes: "
        r"photos/__MACOSX, photos/empty_class$",
        ok=True,
        check=raw_shape((10, 8, 8, 3), ["cats", "dogs"], warned=True),
    ),
    folder_case(
        "empty-class-folder-named",
        with_an_empty_class,
        r"^warning: left out 1 class folder\(s\) without a readable image, so not classes: "
        r"photos/birds$",
        ok=True,
        check=raw_shape((10, 8, 8, 3), ["cats", "dogs"], warned=True),
    ),
    folder_case(
        "class-name-with-newline",
        with_class_named("sea\nlions"),
        r"^error: data\.folder: the class folder photos/sea\\nlions has '\\n' in its name; "
        r"class names become lines of labels\.txt and tab-separated fields of `tlpipe predict`: "
        r"rename it without tabs, line breaks or other control characters$",
    ),
    # `check` runs before download on every dvc run: DVC's hash of the folder skips folder links
    folder_case(
        "check-refuses-a-class-linked-from-outside",
        with_class_linked_from_outside,
        r"^error: data\.dataset: photos/birds links to /\S+/elsewhere, outside photos",
        command="check",
    ),
    folder_case(
        "check-refuses-a-class-name-with-newline",
        with_class_named("sea\nlions"),
        r"^error: data\.folder: the class folder photos/sea\\nlions has '\\n' in its name; ",
        command="check",
    ),
    folder_case(
        "check-records-links-inside",
        with_links_inside,
        ok=True,
        command="check",
        check=links_recorded,
    ),
    folder_case(
        "class-name-with-tab",
        with_class_named("sea\tlions"),
        r"^error: data\.folder: the class folder photos/sea\\tlions has '\\t' in its name; ",
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
        r"^error: data\.folder: photos has 0 class folder\(s\) with readable images; "
        r"expected at least 2 sub-folders of JPEG/PNG images, one per class$",
    ),
    folder_case(
        "classes-nested-too-deep",
        nested_one_level_too_deep,
        r"^error: data\.folder: photos has 0 class folder\(s\) with readable images; "
        r"expected at least 2 ",
    ),
    folder_case(
        "one-class",
        one_class_only,
        r"^error: data\.folder: photos has 1 class folder\(s\) with readable images; "
        r"expected at least 2 ",
    ),
    folder_case(
        "one-class-all-unreadable",
        one_class_all_unreadable,
        r"^warning: skipped 3 unreadable image file\(s\)",
        r"^error: data\.folder: photos has 1 class folder\(s\) with readable images",
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
        r"\(its header declares 36\.9 kB of data, shape \(12, 32, 32, 3\) of uint8, but the "
        rf"file holds 18\.4 kB\){RERUN}",
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
        r"\(its header declares 24\.6 kB of data, shape \(12, 512\) of float32, but the file "
        r"holds 22\.1 kB\)" + RERUN,
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
    # checked before the first stage does work (not in `features`, after download and prepare)
    params_case(
        "unfreeze-from-no-layer",
        {"finetune.unfreeze_from": "block9_conv1"},
        r"^error: finetune\.unfreeze_from: got 'block9_conv1', which is not a layer of vgg16 where "
        r"fine-tuning can start; expected auto \(block5_conv1\) or another first layer of a block",
    ),
    params_case(
        "unfreeze-from-inside-a-resnet-block",
        {"backbone.name": "resnet50", "finetune.unfreeze_from": "conv5_block1_2_conv"},
        r"^error: finetune\.unfreeze_from: got 'conv5_block1_2_conv', which is not a layer of "
        r"resnet50 where fine-tuning can start; expected auto \(conv5_block1_1_conv\)",
    ),
    Case(
        "weights-file-not-hdf5",
        garbage_weights_file,
        (
            r"^error: backbone\.weights: got 'weights/vgg16_notop\.h5', which is not an HDF5 file "
            r"\(no HDF5 signature\); expected Keras weights saved as \.h5",
        ),
    ),
    Case(
        "weights-file-other-hdf5",
        other_hdf5_as_weights,
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
    Case(
        "export-calibration-beyond-the-training-split",
        calibration_beyond_the_training_split,
        (
            r"^error: export\.calibration_images: 100000 is more than the (\d+) training images; "
            r"allowed: 1 to \1$",
        ),
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
    Case(
        "predict-16-bit-grey-as-its-8-bit-twin",
        predict_16_bit_and_8_bit_grey,
        (),
        ok=True,
        check=same_as_8_bit,
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
    *UNTRUSTED,
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
        root = folders[case.id]
        command = case.setup(root, assets)
        if not case.bounded:
            return root, command, run(command, root, check=False, timeout=300)
        before = written_files(root)
        started = time.monotonic()
        peak_file = root.parent / f"{root.name}.peak"
        result = run([PYTHON, "-c", MEASURED, str(peak_file), *command], root, check=False)
        result.seconds = time.monotonic() - started
        result.peak_rss = int(peak_file.read_text()) * 1024
        result.before = before
        return root, command, result

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
    if case.bounded:
        assert result.seconds < BOUND_SECONDS, f"took {result.seconds:.0f} s\n{shown}"
        assert result.peak_rss < BOUND_RSS, f"peak RSS {result.peak_rss / 1e9:.2f} GB\n{shown}"
        if not case.ok:
            after = written_files(root)
            lost = [name for name, digest in result.before.items() if after.get(name) != digest]
            assert not lost, f"changed or deleted by a refused run: {lost}\n{shown}"
