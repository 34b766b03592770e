"""params.yaml as one typed, validated object.

Every stage calls `load_params()` and reads its own section. The whole file is checked up front by
pydantic models, so mistakes anywhere stop the first stage with one line per mistake naming the
key, the value and what is allowed. Validation is strict where pydantic's lax mode would guess
(`true` is not an integer, `"yes"` is not a boolean), except that numbers and booleans may arrive
as text: `dvc exp run -S lr=1e-5` writes `1e-05`, which PyYAML (YAML 1.1) reads as the string
"1e-05". `write_schema()` emits the JSON Schema that editors use to check and complete params.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tlpipe.core.backbone import BACKBONES
from tlpipe.core.export_formats import FORMAT_NAMES
from tlpipe.core.layers import FINETUNE_STARTS
from tlpipe.core.paths import PARAMS_FILE
from tlpipe.core.runtime import UserError
from tlpipe.core.validation import explain

SCHEMA_FILE = Path("params.schema.json")
MIN_IMAGE_SIZE = 32  # keras.applications backbones need at least 32x32 inputs
MAX_BATCH = 4096
# params.yaml is a few kB, two levels deep, and never needs YAML aliases (*name), which can expand
# exponentially ("billion laughs"): files beyond these limits are refused before they are built.
MAX_PARAMS_BYTES = 2**20
MAX_PARAMS_DEPTH = 16


class ParamsError(UserError):
    """A value in params.yaml that the pipeline cannot use."""


def _number_from_text(value: Any) -> Any:
    """'1e-05' -> 1e-05 and '3' -> 3; anything else unchanged, for the strict check to judge."""
    if not isinstance(value, str):
        return value
    for number in (int, float):
        try:
            return number(value.strip())
        except ValueError:
            pass
    return value


def _integer(value: Any) -> Any:
    value = _number_from_text(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _bool_from_text(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _stripped(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _integer_type(**bounds: int) -> Any:
    """A strict int with bounds; text ('3') and whole floats (3.0) are converted first."""
    return Annotated[int, Field(strict=True, **bounds), BeforeValidator(_integer)]


def _number_type(**bounds: float) -> Any:
    """A strict, finite float with bounds; text ('1e-05') is converted first."""
    field = Field(strict=True, allow_inf_nan=False, **bounds)
    return Annotated[float, field, BeforeValidator(_number_from_text)]


# Bounds come before the converters inside each type, so that they also reach the JSON Schema.
Count = _integer_type(ge=1)
BatchSize = _integer_type(ge=1, le=MAX_BATCH)
Seed = _integer_type(ge=0)
Limit = _integer_type(ge=2)
ImageSize = _integer_type(ge=MIN_IMAGE_SIZE)
InputSize = _integer_type(ge=MIN_IMAGE_SIZE, le=1024)
LearningRate = _number_type(gt=0.0, le=1.0)
Fraction = _number_type(gt=0.0, lt=1.0)
Dropout = _number_type(ge=0.0, lt=1.0)
Boolean = Annotated[bool, Field(strict=True), BeforeValidator(_bool_from_text)]
Text = Annotated[str, Field(strict=True, min_length=1), BeforeValidator(_stripped)]
BackboneName = Literal[tuple(BACKBONES)]
# Threads for train and finetune: auto (TensorFlow's default, one per usable core) or a number.
Threads = Annotated[Literal["auto"] | Count, BeforeValidator(_stripped)]
# float32, or Keras mixed precision computing in 16 bits (tlpipe/compute/precision.py).
Precision = Literal["float32", "bfloat16", "float16"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DataParams(Section):
    dataset: Text  # a tensorflow-datasets name (pinned: name:x.y.z), "digits", or "folder"
    folder: Text  # the image folder read when dataset is "folder"; a dvc.yaml dep of download
    limit: Limit | None  # cap on training images; None keeps all
    image_size: ImageSize | None  # for images that differ in size; None keeps the native size

    @property
    def is_digits(self) -> bool:
        return self.dataset == "digits"

    @property
    def image_folder(self) -> Path | None:
        """The image folder when `dataset` is "folder", else None (a tfds name or digits)."""
        return Path(self.folder) if self.dataset == "folder" else None

    @field_validator("dataset")
    @classmethod
    def _not_a_path(cls, dataset: str) -> str:
        if dataset not in ("digits", "folder") and _looks_like_folder(dataset):
            raise ValueError(
                f", a folder; set data.dataset: folder and data.folder: {dataset} (download then "
                "depends on the folder's contents, not only its name)"
            )
        return dataset

    @field_validator("folder")
    @classmethod
    def _folder_exists(cls, folder: str, info: ValidationInfo) -> str:
        # Other datasets: data.folder is only a dvc.yaml dep (paths.NO_FOLDER), which DVC checks.
        if info.data.get("dataset") == "folder" and not Path(folder).is_dir():
            raise ValueError(
                ", which is not a folder; with data.dataset: folder it must be a folder with one "
                "sub-folder of images per class"
            )
        return folder


def _looks_like_folder(dataset: str) -> bool:
    """Whether `dataset` is, or is written like, a folder path (./x, a\\b, an existing folder)
    rather than a tensorflow-datasets name (which may hold one slash: name/config:version)."""
    return Path(dataset).is_dir() or dataset.startswith(".") or "\\" in dataset


class PrepareParams(Section):
    image_size: InputSize
    val_fraction: Fraction
    test_fraction: Fraction


class BackboneParams(Section):
    name: BackboneName
    weights: Text  # "imagenet", "none", or a path to a local .h5

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if value is None:
            return "none"
        if not isinstance(value, str):
            return value
        value = value.strip()
        if value.lower() in ("imagenet", "none"):
            return value.lower()
        if not value.endswith(".h5") or not Path(value).is_file():
            raise ValueError(
                "; expected imagenet, none, or the path of an existing .h5 weights file"
            )
        if not _is_hdf5(Path(value)):  # else found only in `features`, after download and prepare
            raise ValueError(
                ", which is not an HDF5 file (no HDF5 signature); expected Keras weights saved as "
                ".h5, e.g. by model.save_weights"
            )
        return value


class FeaturesParams(Section):
    batch_size: BatchSize
    dtype: Literal["float32", "float16"]  # how the two feature caches are stored
    precision: Precision  # what the conv base computes in


class TrainParams(Section):
    epochs: Count
    batch_size: BatchSize
    lr: LearningRate
    units: Count
    dropout: Dropout
    patience: Count
    replicas: Count  # devices of this machine to train on (tf.distribute.MirroredStrategy)


class FinetuneParams(Section):
    epochs: Count
    batch_size: BatchSize
    unfreeze_from: Text  # a layer name; `auto` is resolved to the backbone's last block on loading
    patience: Count
    augment: Boolean
    precision: Precision  # what the fine-tuned layers compute in
    replicas: Count  # devices of this machine to train on (tf.distribute.MirroredStrategy)
    calibrate: Literal["temperature", "none"]  # a temperature fitted on val ends the saved model


class EvaluateParams(Section):
    batch_size: BatchSize
    tta: Literal["none", "flip"]  # flip: the mean of each image's and its mirror's probabilities


# Cosine similarity of two images' centred head features above which they count as near-duplicates.
Similarity = _number_type(gt=0.0, le=1.0)


class AnalyzeParams(Section):
    top_losses: Count  # test images with the highest loss listed and shown
    gradcam_per_class: _integer_type(ge=0)  # most confident correct test images per class, mapped
    folds: _integer_type(ge=2, le=20)  # cross-validation folds for out-of-sample probabilities
    duplicate_threshold: Similarity
    batch_size: BatchSize


class ExportParams(Section):
    formats: list[Literal[FORMAT_NAMES]]  # files in models/export/ (tlpipe/core/export_formats.py)
    calibration_images: Count  # training images the int8 files measure activation ranges on

    @field_validator("formats")
    @classmethod
    def _formats(cls, formats: list[str]) -> list[str]:
        if not formats:
            raise ValueError(f", an empty list; name one or more of {', '.join(FORMAT_NAMES)}")
        repeated = sorted({name for name in formats if formats.count(name) > 1})
        if repeated:
            raise ValueError(f"; {', '.join(repeated)} listed more than once")
        return formats


class ClusterParams(Section):
    """Where `features` runs. Not a features param in dvc.yaml: the outputs are the same bytes
    either way (tests/test_cluster.py), so switching engines reruns nothing."""

    engine: Literal["local", "ray"]
    address: Text  # a Ray address (host:port, or auto); read only with engine: ray


class TuneParams(Section):
    """`tlpipe tune`'s defaults (its command-line flags override them); read by no stage."""

    space: list[Text]  # KEY=KIND:ARGS ranges, checked by tlpipe/tuning/space.py when tune runs
    trials: Count  # trials per `tlpipe tune` (a second run continues the study)
    startup_trials: Count  # random trials before Optuna's TPE sampler models the results
    metric: Text  # a key of the metrics files (finetuned.accuracy), or FILE:KEY
    direction: Literal["maximize", "minimize"]


class Params(Section):
    seed: Seed
    lr: LearningRate
    threads: Threads
    data: DataParams
    prepare: PrepareParams
    backbone: BackboneParams
    features: FeaturesParams
    train: TrainParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    analyze: AnalyzeParams
    export: ExportParams
    cluster: ClusterParams
    tune: TuneParams

    @property
    def thread_count(self) -> int | None:
        """`threads` as `runtime.use_threads` takes it: None for auto."""
        return None if self.threads == "auto" else self.threads


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamsError with one line per mistake."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_PARAMS_BYTES:
            raise ParamsError(
                f"{path} is {size} bytes; the limit is {MAX_PARAMS_BYTES} (MAX_PARAMS_BYTES)"
            )
        text = Path(path).read_bytes().decode("utf-8")
        _check_yaml_shape(text, path)
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise ParamsError(
            f"{path} not found: run the pipeline from the project's top folder"
        ) from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ParamsError(
            f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} on line {line}); "
            "save it as UTF-8"
        ) from None
    except OSError as error:  # a folder, unreadable
        raise ParamsError(
            f"{path} cannot be read ({error.strerror or error}); expected a YAML file"
        ) from None
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        problem = getattr(error, "problem", error)
        raise ParamsError(f"{path} is not valid YAML{where}: {problem}") from None
    return parse_params(raw)


def _check_yaml_shape(text: str, path: Path) -> None:
    """Refuse YAML aliases and nesting deeper than MAX_PARAMS_DEPTH, from the parser's events
    (which cost little and build nothing) before the document is constructed."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1
            raise ParamsError(
                f"{path} uses a YAML alias (*{event.anchor}, line {line}); params.yaml allows "
                "none, since aliases can expand exponentially: write the value out"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_PARAMS_DEPTH:
                line = event.start_mark.line + 1
                raise ParamsError(
                    f"{path} nests deeper than {MAX_PARAMS_DEPTH} levels (line {line}); the "
                    f"limit is MAX_PARAMS_DEPTH (params.yaml needs 2)"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) into Params."""
    try:
        params = Params.model_validate(raw)
    except ValidationError as error:
        problems = explain(error, raw, root=Params, file_name=PARAMS_FILE.name)
        raise ParamsError("\n".join(problems)) from None
    if params.prepare.val_fraction + params.prepare.test_fraction >= 1.0:
        raise ParamsError(
            f"prepare.val_fraction + prepare.test_fraction: got {params.prepare.val_fraction} + "
            f"{params.prepare.test_fraction}; their sum must be below 1 to leave training images"
        )
    if params.finetune.unfreeze_from == "auto":
        params.finetune.unfreeze_from = BACKBONES[params.backbone.name].last_block
    # Checked here, not only when `features` builds the model: after a download and a resize.
    if params.finetune.unfreeze_from not in FINETUNE_STARTS[params.backbone.name]:
        name = params.backbone.name
        raise ParamsError(
            f"finetune.unfreeze_from: got {params.finetune.unfreeze_from!r}, which is not a layer "
            f"of {name} where fine-tuning can start; expected auto ({BACKBONES[name].last_block}) "
            "or another first layer of a block (tlpipe/core/layers.py lists them)"
        )
    return params


def write_schema(path: Path = SCHEMA_FILE) -> None:
    """Write the JSON Schema of params.yaml (docs/development.md: pointing an editor at it)."""
    schema = Params.model_json_schema()
    schema["title"] = "params.yaml of a tlpipe project"
    path.write_text(json.dumps(schema, indent=2) + "\n")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    """Whether `path` starts with the HDF5 signature, at offset 0 or, after a user block, at 512,
    1024, 2048, ... (the places the HDF5 format allows); reads at most a few bytes per place."""
    size = path.stat().st_size
    with path.open("rb") as file:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            file.seek(offset)
            if file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False
