from __future__ import annotations

import copy
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import REPO, SHIPPED_PARAMS, SHIPPED_PARAMS_DICT, params_with
from tlpipe.core.params import SCHEMA_FILE, ParamsError, load_params, parse_params, write_schema


def test_defaults_are_the_real_product(tmp_path):
    (tmp_path / "params.yaml").write_text(SHIPPED_PARAMS)
    params = load_params(tmp_path / "params.yaml")
    assert params.data.dataset == "cifar10:3.0.2"
    assert params.backbone.weights == "imagenet"
    assert params.finetune.unfreeze_from == "block5_conv1"
    assert params.lr == pytest.approx(1e-5) and isinstance(params.lr, float)
    assert params.data.limit is None


def test_lr_written_by_dvc_exp_run_is_read_as_a_float(tmp_path):
    # `dvc exp run -S lr=1e-5` writes `lr: 1e-05`, which PyYAML reads as the *string* "1e-05".
    text = SHIPPED_PARAMS.replace("lr: 1.0e-05", "lr: 1e-05")
    assert yaml.safe_load(text)["lr"] == "1e-05"
    (tmp_path / "params.yaml").write_text(text)
    lr = load_params(tmp_path / "params.yaml").lr
    assert isinstance(lr, float) and lr == 1e-05


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("prepare.image_size", 16, "prepare.image_size: got 16; expected an integer >= 32"),
        (
            "prepare.val_fraction",
            1.5,
            "prepare.val_fraction: got 1.5; expected a number > 0.0 and < 1.0",
        ),
        ("prepare.val_fraction", 0, "prepare.val_fraction: got 0"),
        ("lr", "fast", "lr: got 'fast'; expected a number > 0.0"),
        ("lr", -1e-5, "lr: got -1e-05"),
        ("train.epochs", 0, "train.epochs: got 0; expected an integer >= 1"),
        ("train.epochs", True, "train.epochs: got True"),
        ("train.epochs", 2.5, "train.epochs: got 2.5"),
        ("train.dropout", 1.0, "train.dropout: got 1.0; expected a number >= 0.0 and < 1.0"),
        ("data.limit", 1, "data.limit: got 1; expected an integer >= 2"),
        ("backbone.name", "alexnet", "backbone.name: got 'alexnet'; expected one of vgg16"),
        ("backbone.weights", "missing/weights.h5", "backbone.weights: got 'missing/weights.h5'"),
        (
            "data.dataset",
            "./no/such/folder",
            "data.dataset: got './no/such/folder', a folder; set data.dataset: folder and "
            "data.folder: ./no/such/folder",
        ),
        ("data.dataset", "", "data.dataset: got ''; expected a non-empty string"),
        ("seed", -3, "seed: got -3; expected an integer >= 0"),
        ("analyze.folds", 1, "analyze.folds: got 1; expected an integer >= 2 and <= 20"),
        ("analyze.folds", 50, "analyze.folds: got 50; expected an integer >= 2 and <= 20"),
        (
            "analyze.duplicate_threshold",
            1.5,
            "analyze.duplicate_threshold: got 1.5; expected a number > 0.0 and <= 1.0",
        ),
        ("analyze.duplicate_threshold", 0, "analyze.duplicate_threshold: got 0"),
        ("analyze.top_losses", 0, "analyze.top_losses: got 0; expected an integer >= 1"),
        ("analyze.gradcam_per_class", -1, "analyze.gradcam_per_class: got -1"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(key, value, expected):
    with pytest.raises(ParamsError) as error:
        parse_params(params_with(key, value))
    assert str(error.value).startswith(expected)


def test_unknown_and_missing_keys_are_refused():
    raw = copy.deepcopy(SHIPPED_PARAMS_DICT)
    raw["train"]["epoch"] = 3
    with pytest.raises(ParamsError, match=r"^train\.epoch: unknown key; train allows epochs, "):
        parse_params(raw)
    raw = copy.deepcopy(SHIPPED_PARAMS_DICT)
    del raw["finetune"]["unfreeze_from"]
    with pytest.raises(ParamsError, match=r"^finetune\.unfreeze_from: missing"):
        parse_params(raw)


def test_fractions_must_leave_training_images():
    raw = params_with("prepare.val_fraction", 0.5)
    raw["prepare"]["test_fraction"] = 0.5
    with pytest.raises(ParamsError, match="sum must be below 1"):
        parse_params(raw)


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match=r"not valid YAML \(line \d+\)"):
        load_params(tmp_path / "params.yaml")


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1.0, allow_nan=False))
def test_any_positive_lr_written_as_text_or_number_round_trips(lr):
    for value in (lr, repr(lr), f"{lr:e}"):
        assert parse_params(params_with("lr", value)).lr == pytest.approx(lr, rel=1e-6)


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
KEYS = [
    "seed",
    "lr",
    "data.limit",
    "prepare.image_size",
    "prepare.val_fraction",
    "train.epochs",
    "train.lr",
    "train.dropout",
    "finetune.batch_size",
    "backbone.name",
    "features.batch_size",
    "analyze.folds",
    "analyze.duplicate_threshold",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(KEYS), ANY_VALUE)
def test_any_value_is_either_accepted_or_refused_with_a_message_naming_the_key(key, value):
    try:
        parse_params(params_with(key, value))
    except ParamsError as error:
        assert str(error).startswith(f"{key}: ")
        assert "\n" not in str(error)


def test_the_json_schema_in_the_repository_is_the_one_the_models_generate(tmp_path):
    write_schema(tmp_path / "schema.json")
    assert (tmp_path / "schema.json").read_text() == (REPO / SCHEMA_FILE).read_text(), (
        "params.schema.json is out of date: run `make schema`"
    )


def test_editors_reading_the_schema_accept_the_shipped_params_and_flag_mistakes():
    import jsonschema

    schema = json.loads((REPO / SCHEMA_FILE).read_text())
    jsonschema.validate(SHIPPED_PARAMS_DICT, schema)
    for key, value in [("train.epochs", 0), ("backbone.name", "alexnet"), ("train.epoch", 3)]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(params_with(key, value), schema)
