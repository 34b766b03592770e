"""Keras archives (.keras): saved byte-reproducibly, loaded in safe mode after their members are
checked; and models/model.json, the model's backbone, input size and classes."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

from tlpipe.core.files import RERUN_HINT, atomic_path, readable_size
from tlpipe.core.jsonfiles import load_json, parse_json
from tlpipe.core.runtime import UserError, first_line

FIXED_SAVE_DATE = "1980-01-01@00:00:00"  # Keras's own date format
MAX_MODEL_JSON_BYTES = 16 * 2**20  # a model's config.json: 0.02-0.4 MB for the backbones
MAX_MODEL_WEIGHTS_BYTES = 4 * 2**30  # model.weights.h5: 59 MB for VGG16 without its top
MAX_MODEL_DEPTH = 64  # a model's config.json: 10-11 levels for the backbones
MAX_ZIP_RATIO = 100  # unpacked / stored size of a member over 1 MiB (Keras stores weights as is)
KERAS_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")  # all a pipeline model holds


def load_model_info(path: Path) -> dict:
    """models/model.json as `finetune` writes it: backbone, image_size (the model's input) and
    classes (names in output order)."""
    info = load_json(path)
    if not isinstance(info, dict) or not {"backbone", "image_size", "classes"} <= set(info):
        raise UserError(
            f"{path}: expected the keys backbone, image_size and classes written by the "
            "finetune stage; run `dvc repro`"
        )
    return info


def save_model(model: Any, path: Path) -> None:
    """Save a Keras model atomically as a byte-reproducible .keras file."""
    with atomic_path(path) as temporary:
        model.save(temporary)
        _drop_timestamps(temporary)


def _drop_timestamps(archive: Path) -> None:
    """Rewrite a .keras zip with fixed entry times and save date, so equal models give equal bytes.

    Keras stamps the current time into the zip entries and metadata.json, and Python object ids
    into config.json; without this, every rerun would change the file's hash and DVC would see a
    new model each time.
    """
    with zipfile.ZipFile(archive) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist()]
    # Each entry keeps Keras's own compression (stored): deflating the weights again would cost
    # about 3 s per VGG16-sized model to save 9 % of its size.
    with zipfile.ZipFile(archive, "w") as target:
        for info, data in sorted(entries, key=lambda entry: entry[0].filename):
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata["date_saved"] = FIXED_SAVE_DATE
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = _renumber_shared_objects(data.decode()).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            target.writestr(fixed, data, info.compress_type)


def _renumber_shared_objects(config: str) -> str:
    """Replace Keras's shared_object_id values (Python id()s, new in every process) by 1, 2, 3..."""
    numbers: dict[str, int] = {}

    def renumber(match: re.Match) -> str:
        return f'"shared_object_id": {numbers.setdefault(match.group(1), len(numbers) + 1)}'

    return re.sub(r'"shared_object_id": (\d+)', renumber, config)


def load_model(path: Path) -> Any:
    """Load a .keras model in safe mode (no deserialised Python code); one line if unusable.

    The archive is inspected first: it must hold only the members a Keras model has (no paths
    that would be extracted elsewhere), each within its size limit (no zip bombs), and a config
    nested no deeper than MAX_MODEL_DEPTH.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: run `dvc repro` to create it")
    # Keras would say "File not found" of an empty or truncated file.
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not a usable Keras model (not a .keras zip archive: empty, truncated or "
            f"overwritten); {RERUN_HINT}"
        )
    _check_keras_archive(path)  # before TensorFlow loads: a refusal takes a second, not ten
    import keras

    # Registered with Keras: the first layer of every pipeline model, the last of a calibrated one.
    from tlpipe.compute import temperature  # noqa: F401
    from tlpipe.core import normalization  # noqa: F401

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except RecursionError:
        raise UserError(
            f"{path} is not a usable Keras model (its config.json nests layers deeper than "
            f"Python can follow); {RERUN_HINT}"
        ) from None
    except (
        ValueError,
        OSError,
        KeyError,
        TypeError,
        zipfile.BadZipFile,
    ) as error:  # TypeError: unknown classes
        raise UserError(
            f"{path} is not a usable Keras model ({first_line(error)}); {RERUN_HINT}"
        ) from None


def _check_keras_archive(path: Path) -> None:
    """Refuse a .keras zip with members other than KERAS_MEMBERS or over their size limits.

    Keras extracts every member to a temporary folder when an archive has more than its three
    (assets), and reads config.json whole into memory; the sizes checked are those the archive
    declares, which Python's zipfile never reads past.
    """
    problem = f"{path} is not a usable Keras model"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                if info.filename not in KERAS_MEMBERS:
                    raise UserError(
                        f"{problem} (it holds {info.filename!r}; a pipeline model holds only "
                        f"{', '.join(KERAS_MEMBERS)}); {RERUN_HINT}"
                    )
                limit, name = (
                    (MAX_MODEL_WEIGHTS_BYTES, "MAX_MODEL_WEIGHTS_BYTES")
                    if info.filename.endswith(".h5")
                    else (MAX_MODEL_JSON_BYTES, "MAX_MODEL_JSON_BYTES")
                )
                unpacks = f"{info.filename} unpacks to {readable_size(info.file_size)} from "
                unpacks += readable_size(info.compress_size)
                if info.file_size > limit:
                    raise UserError(
                        f"{problem} ({unpacks}; the limit is {readable_size(limit)} ({name})); "
                        f"{RERUN_HINT}"
                    )
                if info.file_size > 2**20 and info.file_size > MAX_ZIP_RATIO * info.compress_size:
                    raise UserError(
                        f"{problem} ({unpacks}: a zip bomb? the limit is {MAX_ZIP_RATIO} times "
                        f"(MAX_ZIP_RATIO)); {RERUN_HINT}"
                    )
            if "config.json" in archive.namelist():
                parse_json(
                    archive.read("config.json"),
                    path / "config.json",
                    max_depth=MAX_MODEL_DEPTH,
                    limit_name="MAX_MODEL_DEPTH",
                )
    except zipfile.BadZipFile as error:
        raise UserError(f"{problem} ({error}); {RERUN_HINT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{problem} (config.json is not valid JSON: {error}); {RERUN_HINT}"
        ) from None
