"""params.yaml as one typed, validated object.

Every stage calls `load_params()` and reads its own section. The whole file is checked up front, so
a typo or a bad value anywhere stops the first stage with one line naming the key, the value and
what is allowed. Numbers may arrive as strings: `dvc exp run -S lr=1e-5` writes `1e-05`, which
PyYAML (YAML 1.1) reads back as the string "1e-05".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.runtime import UserError

PARAMS_FILE = Path("params.yaml")

# The backbones of keras.applications we support, each with its default first trainable layer
# (`finetune.unfreeze_from: auto`): the start of its last block.
DEFAULT_UNFREEZE_FROM = {
    "vgg16": "block5_conv1",
    "resnet50": "conv5_block1_1_conv",
    "efficientnetb0": "block7a_expand_conv",
    "densenet121": "conv5_block1_0_bn",
    "mobilenetv2": "block_16_expand",
}
BACKBONE_NAMES = tuple(DEFAULT_UNFREEZE_FROM)
MIN_IMAGE_SIZE = 32  # keras.applications backbones need at least 32x32 inputs


class ParamsError(UserError):
    """A value in params.yaml that the pipeline cannot use."""


@dataclass(frozen=True)
class DataParams:
    dataset: str  # a tensorflow-datasets name, "digits", or a folder with one sub-folder per class
    limit: int | None  # cap on training images; None keeps all
    image_size: int | None  # square size for sources whose images differ in size; None keeps native

    @property
    def is_digits(self) -> bool:
        return self.dataset == "digits"

    @property
    def folder(self) -> Path | None:
        """The image folder when `dataset` names one, else None (a tfds name or digits)."""
        if self.is_digits:
            return None
        path = Path(self.dataset)
        if path.is_dir() or "/" in self.dataset or "\\" in self.dataset or self.dataset.startswith("."):
            return path
        return None


@dataclass(frozen=True)
class PrepareParams:
    image_size: int
    val_fraction: float
    test_fraction: float


@dataclass(frozen=True)
class BackboneParams:
    name: str
    weights: str  # "imagenet", "none", or a path to a local .h5


@dataclass(frozen=True)
class FeaturesParams:
    batch_size: int


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    lr: float
    units: int
    dropout: float
    patience: int


@dataclass(frozen=True)
class FinetuneParams:
    epochs: int
    batch_size: int
    unfreeze_from: str  # a layer name; `auto` in params.yaml is resolved to the backbone's default
    patience: int
    augment: bool  # random flips/shifts/rotations/zoom; every epoch then runs the full model


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int


@dataclass(frozen=True)
class Params:
    seed: int
    lr: float  # fine-tuning learning rate, top level so `dvc exp run -S lr=...` reaches it
    data: DataParams
    prepare: PrepareParams
    backbone: BackboneParams
    features: FeaturesParams
    train: TrainParams
    finetune: FinetuneParams
    evaluate: EvaluateParams


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamsError naming the first bad key."""
    try:
        raw = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the pipeline from the project's top folder") from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ParamsError(
            f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} on line {line}); save it as UTF-8"
        ) from None
    except OSError as error:  # a folder, unreadable
        raise ParamsError(f"{path} cannot be read ({error.strerror or error}); expected a YAML file") from None
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ParamsError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    return parse_params(raw)


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) into Params."""
    top = _section(raw, "", ("seed", "lr", "data", "prepare", "backbone", "features", "train", "finetune", "evaluate"))
    data = _section(top["data"], "data", ("dataset", "limit", "image_size"))
    prepare = _section(top["prepare"], "prepare", ("image_size", "val_fraction", "test_fraction"))
    backbone = _section(top["backbone"], "backbone", ("name", "weights"))
    features = _section(top["features"], "features", ("batch_size",))
    train = _section(top["train"], "train", ("epochs", "batch_size", "lr", "units", "dropout", "patience"))
    finetune = _section(top["finetune"], "finetune", ("epochs", "batch_size", "unfreeze_from", "patience", "augment"))
    evaluate = _section(top["evaluate"], "evaluate", ("batch_size",))

    params = Params(
        seed=_int(top, "seed", minimum=0),
        lr=_float(top, "lr", above=0.0, maximum=1.0),
        data=DataParams(
            dataset=_text(data, "data.dataset"),
            limit=_int(data, "data.limit", minimum=2, optional=True),
            image_size=_int(data, "data.image_size", minimum=MIN_IMAGE_SIZE, optional=True),
        ),
        prepare=PrepareParams(
            image_size=_int(prepare, "prepare.image_size", minimum=MIN_IMAGE_SIZE, maximum=1024),
            val_fraction=_float(prepare, "prepare.val_fraction", above=0.0, below=1.0),
            test_fraction=_float(prepare, "prepare.test_fraction", above=0.0, below=1.0),
        ),
        backbone=BackboneParams(
            name=_choice(backbone, "backbone.name", BACKBONE_NAMES),
            weights=_weights(backbone, "backbone.weights"),
        ),
        features=FeaturesParams(batch_size=_int(features, "features.batch_size", minimum=1, maximum=4096)),
        train=TrainParams(
            epochs=_int(train, "train.epochs", minimum=1),
            batch_size=_int(train, "train.batch_size", minimum=1, maximum=4096),
            lr=_float(train, "train.lr", above=0.0, maximum=1.0),
            units=_int(train, "train.units", minimum=1),
            dropout=_float(train, "train.dropout", minimum=0.0, below=1.0),
            patience=_int(train, "train.patience", minimum=1),
        ),
        finetune=FinetuneParams(
            epochs=_int(finetune, "finetune.epochs", minimum=1),
            batch_size=_int(finetune, "finetune.batch_size", minimum=1, maximum=4096),
            unfreeze_from=_unfreeze_from(finetune, backbone),
            patience=_int(finetune, "finetune.patience", minimum=1),
            augment=_bool(finetune, "finetune.augment"),
        ),
        evaluate=EvaluateParams(batch_size=_int(evaluate, "evaluate.batch_size", minimum=1, maximum=4096)),
    )
    if params.prepare.val_fraction + params.prepare.test_fraction >= 1.0:
        raise ParamsError(
            f"prepare.val_fraction + prepare.test_fraction: got {params.prepare.val_fraction} + "
            f"{params.prepare.test_fraction}; their sum must be below 1 to leave training images"
        )
    folder = params.data.folder
    if folder is not None and not folder.is_dir():
        raise ParamsError(
            f"data.dataset: got {params.data.dataset!r}, which is not a folder; use a tensorflow-datasets "
            "name (e.g. cifar10), 'digits', or a folder with one sub-folder of images per class"
        )
    return params


def _section(raw: Any, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    label = name or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{label}: got {raw!r}; expected a mapping with keys {', '.join(keys)}")
    prefix = f"{name}." if name else ""
    unknown = sorted(set(raw) - set(keys), key=str)
    if unknown:
        raise ParamsError(f"{prefix}{unknown[0]}: unknown key; {label} allows {', '.join(keys)}")
    missing = [key for key in keys if key not in raw]
    if missing:
        raise ParamsError(f"{prefix}{missing[0]}: missing from params.yaml")
    return raw


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _int(section: dict, key: str, minimum: int, maximum: int | None = None, optional: bool = False) -> int | None:
    value = section[_leaf(key)]
    allowed = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    if optional:
        allowed += " or null"
        if value is None:
            return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{key}: got {value!r}; expected {allowed}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ParamsError(f"{key}: got {value}; expected {allowed}")
    return value


def _float(
    section: dict,
    key: str,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> float:
    value = section[_leaf(key)]
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if above is not None:
        bounds.append(f"> {above}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    if below is not None:
        bounds.append(f"< {below}")
    allowed = "a number " + " and ".join(bounds)
    number: float | None = None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number):
        raise ParamsError(f"{key}: got {value!r}; expected {allowed}")
    if (
        (minimum is not None and number < minimum)
        or (above is not None and number <= above)
        or (maximum is not None and number > maximum)
        or (below is not None and number >= below)
    ):
        raise ParamsError(f"{key}: got {value!r}; expected {allowed}")
    return number


def _text(section: dict, key: str) -> str:
    value = section[_leaf(key)]
    if not isinstance(value, str) or not value.strip():
        raise ParamsError(f"{key}: got {value!r}; expected a non-empty string")
    return value.strip()


def _bool(section: dict, key: str) -> bool:
    value = section[_leaf(key)]
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ParamsError(f"{key}: got {value!r}; expected true or false")
    return value


def _choice(section: dict, key: str, choices: tuple[str, ...]) -> str:
    value = section[_leaf(key)]
    if value not in choices:
        raise ParamsError(f"{key}: got {value!r}; expected one of {', '.join(choices)}")
    return value


def _weights(section: dict, key: str) -> str:
    value = section[_leaf(key)]
    if value is None:
        value = "none"
    if not isinstance(value, str) or not value.strip():
        raise ParamsError(f"{key}: got {value!r}; expected imagenet, none, or a path to a local .h5 file")
    value = value.strip()
    if value.lower() in ("imagenet", "none"):
        return value.lower()
    if not value.endswith(".h5") or not Path(value).is_file():
        raise ParamsError(
            f"{key}: got {value!r}; expected imagenet, none, or the path of an existing .h5 weights file"
        )
    return value


def _unfreeze_from(finetune: dict, backbone: dict) -> str:
    value = _text(finetune, "finetune.unfreeze_from")
    return DEFAULT_UNFREEZE_FROM.get(backbone["name"], value) if value == "auto" else value
