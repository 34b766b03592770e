"""pydantic's validation errors in the words params.yaml's users need: one line per mistake,
"key: got value; expected what is allowed", the value as written and what is allowed read from the
field's type and bounds."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


def explain(
    error: ValidationError, raw: Any, *, root: type[BaseModel], file_name: str
) -> list[str]:
    """One line per mistake in `raw` (the mapping as read) that validating `root` found."""
    return list(dict.fromkeys(_explain(p, raw, root, file_name) for p in _by_field(error, root)))


def _explain(problem: dict[str, Any], raw: Any, root: type[BaseModel], file_name: str) -> str:
    """One pydantic error as 'key: got value; expected what is allowed', the value as written."""
    loc = [str(part) for part in problem["loc"]]
    written = raw
    for part in loc:
        written = written.get(part) if isinstance(written, dict) else None
    value = written if loc else raw
    key = ".".join(loc) or file_name
    if problem["type"] == "extra_forbidden":
        section = _model_at(root, loc[:-1])
        where = ".".join(loc[:-1]) or file_name
        return f"{key}: unknown key; {where} allows {', '.join(section.model_fields)}"
    if problem["type"] == "missing":
        return f"{key}: missing from {file_name}"
    if problem["type"] == "value_error":  # our validators' reasons continue "key: got value"
        return f"{key}: got {value!r}{problem['ctx']['error']}"
    if loc:
        field = _model_at(root, loc[:-1]).model_fields[loc[-1]]
        allowed = _allowed(field.annotation, field.metadata)
    else:
        allowed = _allowed(root, [])
    return f"{key}: got {value!r}; expected {allowed}"


def _by_field(error: ValidationError, root: type[BaseModel]) -> list[dict[str, Any]]:
    """The errors with each location cut to the params key: a value that fits no member of a
    union (`threads`: auto or a number) gives one error per member, tagged by pydantic; they
    become one error on the key, explained from its whole type."""
    problems = []
    for problem in error.errors():
        model: Any = root
        key: list[str] = []
        for part in problem["loc"]:
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                break
            if part not in model.model_fields:
                break
            key.append(part)
            model = model.model_fields[part].annotation
        if len(key) < len(problem["loc"]) and problem["type"] != "extra_forbidden":
            problem = {**problem, "loc": tuple(key), "type": "union"}
        problems.append(problem)
    return problems


def _model_at(root: type[BaseModel], loc: list[str]) -> type[BaseModel]:
    model: type[BaseModel] = root
    for name in loc:
        model = model.model_fields[name].annotation
    return model


BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _allowed(annotation: Any, metadata: list[Any]) -> str:
    """What a field accepts, in words, from its type and constraints."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        return _allowed(base, [*extra, *metadata])
    args = get_args(annotation)
    if type(None) in args:
        inner = next(arg for arg in args if arg is not type(None))
        return f"{_allowed(inner, metadata)} or null"
    if get_origin(annotation) in (Union, types.UnionType):
        return " or ".join(_allowed(arg, metadata) for arg in args)
    if get_origin(annotation) is list:
        return f"a list whose items are each {_allowed(args[0], [])}"
    for item in list(metadata):
        if isinstance(item, FieldInfo):
            metadata = [*metadata, *item.metadata]
    if get_origin(annotation) is Literal:
        return str(args[0]) if len(args) == 1 else "one of " + ", ".join(map(str, args))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a mapping with keys {', '.join(annotation.model_fields)}"
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}
    bounds = [
        f"{symbol} {getattr(item, attribute)}"
        for item in metadata
        for bound, attribute, symbol in BOUNDS
        if isinstance(item, bound)
    ]
    return (
        " and ".join([f"{kind[annotation]} {bounds[0]}", *bounds[1:]])
        if bounds
        else kind[annotation]
    )
