"""What `tlpipe tune` searches: `KEY=KIND:ARGS` ranges over params.yaml keys, checked up front.

Kinds: `log-uniform:LOW,HIGH` and `uniform:LOW,HIGH` (floats), `int:LOW,HIGH` (whole numbers,
both ends included), `choice:A,B,...` (each read as YAML, as `dvc exp run -S` reads it). The same
text comes from `--param` or from params.yaml's `tune.space` list. A key must be one of the
pipeline's params (the pydantic models behind params.schema.json), not in `tune` itself, and every
end of a range, and every choice, must pass params.yaml's own validation with the other keys as
they are, so that no trial can fail on a value the search chose.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from tlpipe.core.params import Params, ParamsError, parse_params
from tlpipe.core.runtime import UserError

KINDS = ("log-uniform", "uniform", "int", "choice")
NOT_TUNABLE = ("tune", "cluster")  # the search's own settings; where features runs, not what


@dataclass(frozen=True)
class Range:
    """One searched key: `kind` and its two ends (`values` = (low, high)) or its choices."""

    key: str  # dotted, as -S takes it: finetune.unfreeze_from
    kind: str
    values: tuple[Any, ...]

    def suggest(self, trial) -> Any:
        """The value an Optuna trial picks for this key."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.values)
        return trial.suggest_float(self.key, *self.values, log=self.kind == "log-uniform")


def tunable_keys(model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Every dotted leaf key of params.yaml that a search may set."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        if not prefix and name in NOT_TUNABLE:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += tunable_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def parse_range(text: str) -> Range:
    """`lr=log-uniform:1e-5,1e-3` -> Range; a UserError naming the text and what is allowed."""
    key, equals, spec = text.partition("=")
    kind, colon, args = spec.partition(":")
    key, kind = key.strip(), kind.strip()
    if not equals or not colon or kind not in KINDS:
        raise UserError(
            f"--param {text!r}: expected KEY=KIND:ARGS with KIND one of {', '.join(KINDS)} "
            "(lr=log-uniform:1e-5,1e-3, finetune.unfreeze_from=choice:block4_conv1,block5_conv1)"
        )
    keys = tunable_keys()
    if key not in keys:
        raise UserError(f"--param {text!r}: {key!r} is not a params.yaml key a search can set")
    items = [item.strip() for item in args.split(",")]
    if kind == "choice":
        if len(items) < 2 or "" in items:
            raise UserError(f"--param {text!r}: choice needs two or more values: choice:A,B")
        return Range(key, kind, tuple(yaml.safe_load(item) for item in items))
    number = int if kind == "int" else float
    try:
        low, high = (number(item) for item in items)
    except ValueError:
        raise UserError(
            f"--param {text!r}: {kind} needs two {number.__name__} ends, LOW,HIGH"
        ) from None
    if not low < high or (kind == "log-uniform" and low <= 0):
        floor = "0 < " if kind == "log-uniform" else ""
        raise UserError(f"--param {text!r}: expected {floor}LOW < HIGH; got {low}, {high}")
    return Range(key, kind, (low, high))


def check_space(space: list[Range], raw_params: dict) -> None:
    """Each key once, and every end and choice valid in params.yaml as it stands: one UserError
    naming the first that is not."""
    keys = [searched.key for searched in space]
    if not space:
        raise UserError(
            "nothing to search: give --param KEY=KIND:ARGS, or list ranges in params.yaml's "
            "tune.space"
        )
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UserError(f"--param: {', '.join(repeated)} given more than once; give each once")
    for searched in space:
        for value in searched.values:
            try:
                parse_params(with_value(raw_params, searched.key, value))
            except ParamsError as error:
                raise UserError(
                    f"--param {searched.key}: {value!r} is not a value params.yaml accepts: "
                    f"{str(error).splitlines()[0]}"
                ) from None


def with_value(raw_params: dict, dotted: str, value: Any) -> dict:
    """A copy of the params mapping with `dotted` set to `value`, as `dvc exp run -S` sets it."""
    copy = deepcopy(raw_params)
    *sections, leaf = dotted.split(".")
    node = copy
    for section in sections:
        node = node[section]
    node[leaf] = value
    return copy


def set_flags(values: dict[str, Any]) -> list[str]:
    """`-S key=value` for each chosen value, in the text YAML reads back as the same value."""
    flags: list[str] = []
    for key, value in values.items():
        text = repr(value) if isinstance(value, float) else yaml.safe_dump(value).strip()
        flags += ["-S", f"{key}={text.removesuffix(chr(10) + '...')}"]
    return flags
