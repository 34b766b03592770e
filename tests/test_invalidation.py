"""Exact invalidation: every params.yaml key and every code module marks exactly its readers
changed.

After one tiny offline run (dvc.lock written, `dvc status` clean), each params.yaml leaf is set to
another valid value, or a comment is appended to each module of stages/ and tlpipe/, and
`dvc status --json` must name exactly the stages in READERS. Only directly affected stages are
compared: DVC reports a downstream stage as changed only once an upstream output has really
changed, which `status` does not simulate.
"""

from __future__ import annotations

import ast
import io
import json
import sys
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from tests.helpers import (
    ALL_STAGES,
    OFFLINE,
    REPO,
    SHIPPED_PARAMS,
    SHIPPED_PARAMS_DICT,
    TINY,
    UP_TO_DATE,
    copy_project,
    run,
    set_param,
)
from tlpipe.core.params import parse_params

STAGES = ALL_STAGES
SEEDED = frozenset({"download", "prepare", "features", "train", "finetune"})

# THE table. params.yaml key -> (another valid value, the stages that read the key);
# stages/ or tlpipe/ module -> (None, the stages that import it, directly or through others).
READERS: dict[str, tuple[object, frozenset[str]]] = {
    # export: the model card lists every key that shapes the model (all but evaluate.*).
    "seed": (7, SEEDED | {"analyze", "export"}),  # evaluate is not seeded: it only predicts
    "lr": (3e-5, frozenset({"finetune", "export"})),
    "threads": (
        1,
        frozenset({"train", "finetune", "analyze", "export"}),
    ),  # trained weights depend on it
    "data.dataset": ("mnist:3.0.1", frozenset({"download", "export"})),
    # the dvc.yaml dep ${data.folder}: another path, another dependency
    "data.folder": ("params.schema.json", frozenset({"download", "export"})),
    "data.limit": (500, frozenset({"download", "export"})),
    "data.image_size": (64, frozenset({"download", "export"})),
    "prepare.image_size": (48, frozenset({"prepare", "export"})),
    "prepare.val_fraction": (0.15, frozenset({"prepare", "export"})),
    "prepare.test_fraction": (0.25, frozenset({"prepare", "export"})),
    # features: the conv base; finetune: models/model.json and `auto`.
    "backbone.name": ("resnet50", frozenset({"features", "finetune", "export"})),
    "backbone.weights": ("imagenet", frozenset({"features", "export"})),
    "features.batch_size": (64, frozenset({"features", "export"})),
    "features.dtype": ("float16", frozenset({"features", "export"})),
    "features.precision": ("float32", frozenset({"features", "export"})),
    "train.epochs": (4, frozenset({"train", "export"})),
    "train.batch_size": (32, frozenset({"train", "analyze", "export"})),
    "train.lr": (5e-4, frozenset({"train", "analyze", "export"})),
    "train.units": (128, frozenset({"train", "analyze", "export"})),
    "train.dropout": (0.3, frozenset({"train", "analyze", "export"})),
    "train.patience": (2, frozenset({"train", "export"})),
    "train.replicas": (2, frozenset({"train", "export"})),
    "finetune.epochs": (3, frozenset({"finetune", "export"})),
    "finetune.batch_size": (32, frozenset({"finetune", "export"})),
    "finetune.unfreeze_from": (
        "block4_conv1",
        frozenset({"features", "finetune", "export"}),
    ),  # the cut is cached by features
    "finetune.patience": (2, frozenset({"finetune", "export"})),
    "finetune.augment": (True, frozenset({"finetune", "export"})),
    "finetune.precision": ("bfloat16", frozenset({"finetune", "export"})),
    "finetune.replicas": (2, frozenset({"finetune", "export"})),
    "finetune.calibrate": ("none", frozenset({"finetune", "export"})),
    "evaluate.batch_size": (64, frozenset({"evaluate"})),
    # then analyze (the test probabilities) and export (the card's scores), once those change
    "evaluate.tta": ("flip", frozenset({"evaluate"})),
    "analyze.top_losses": (12, frozenset({"analyze"})),
    "analyze.gradcam_per_class": (3, frozenset({"analyze"})),
    "analyze.folds": (3, frozenset({"analyze"})),
    "analyze.duplicate_threshold": (0.95, frozenset({"analyze"})),
    "analyze.batch_size": (64, frozenset({"analyze"})),
    "export.formats": (["saved_model", "onnx_int8"], frozenset({"export"})),
    "export.calibration_images": (50, frozenset({"export"})),
    # tlpipe tune's defaults: no stage reads them
    "tune.space": (["lr=uniform:1e-5,1e-4"], frozenset()),
    "tune.trials": (3, frozenset()),
    "tune.startup_trials": (5, frozenset()),
    "tune.metric": ("finetuned.loss", frozenset()),
    "tune.direction": ("minimize", frozenset()),
    "stages/check.py": (None, frozenset({"check"})),
    "stages/download.py": (None, frozenset({"download"})),
    "stages/prepare.py": (None, frozenset({"prepare"})),
    "stages/features.py": (None, frozenset({"features"})),
    "stages/train.py": (None, frozenset({"train"})),
    "stages/finetune.py": (None, frozenset({"finetune"})),
    "stages/evaluate.py": (None, frozenset({"evaluate"})),
    "stages/analyze.py": (None, frozenset({"analyze"})),
    "stages/export.py": (None, frozenset({"export"})),
    # tlpipe/core: what every stage imports (dvc.yaml declares the folder once per stage). params.py
    # reads the backbone table and layers.py (where each can be cut); normalization.py is the
    # models' first layer; runtime.py holds the
    # threads and imports cpu.py, which also turns oneDNN on before TensorFlow loads.
    **{
        f"tlpipe/core/{name}.py": (None, STAGES)
        for name in (
            "paths",
            "params",
            "runtime",
            "cpu",
            "backbone",
            "normalization",
            "layers",
            "validation",
            "files",
            "arrays",
            "jsonfiles",
            "export_formats",  # params.py checks export.formats against its table
        )
    },
    # The subpackages' __init__.py hold a docstring only (the guard test below): core's is part of
    # the declared folder, the others are declared by no stage.
    "tlpipe/core/__init__.py": (None, STAGES),
    "tlpipe/data/__init__.py": (None, frozenset()),
    "tlpipe/compute/__init__.py": (None, frozenset()),
    "tlpipe/outputs/__init__.py": (None, frozenset()),
    # analyze declares the whole folder
    **{
        f"tlpipe/analysis/{name}.py": (None, frozenset({"analyze"}))
        for name in (
            "__init__",
            "duplicates",
            "gradcam",
            "labels",
            "mistakes",
            "pictures",
        )
    },
    # export: the Markdown tables of the model card and of the exported files' scores
    "tlpipe/analysis/tables.py": (None, frozenset({"analyze", "export"})),
    "tlpipe/data/balance.py": (None, frozenset({"prepare", "analyze"})),
    "tlpipe/data/sources.py": (None, frozenset({"download"})),
    "tlpipe/data/network.py": (None, frozenset({"download"})),
    "tlpipe/data/folders.py": (None, frozenset({"check", "download"})),  # check: the folder's links
    # prepare: via splits.py; check: via folders.py
    "tlpipe/data/images.py": (None, frozenset({"check", "download", "prepare"})),
    "tlpipe/data/splits.py": (None, frozenset({"prepare"})),
    "tlpipe/compute/features.py": (None, frozenset({"features"})),
    "tlpipe/compute/precision.py": (None, frozenset({"features", "finetune"})),
    "tlpipe/compute/cluster.py": (None, frozenset({"features"})),
    # export: the Keras model's answers on the test split, which each exported file's are checked on
    "tlpipe/compute/streaming.py": (
        None,
        frozenset({"train", "finetune", "evaluate", "analyze", "export"}),
    ),
    "tlpipe/compute/tta.py": (None, frozenset({"evaluate"})),  # also `tlpipe predict --tta`
    "tlpipe/compute/training.py": (None, frozenset({"train", "finetune", "analyze"})),
    "tlpipe/compute/archives.py": (None, STAGES - {"check", "download", "prepare"}),  # .keras files
    # the last layer of a calibrated model, registered wherever archives.py loads one
    "tlpipe/compute/temperature.py": (None, STAGES - {"check", "download", "prepare"}),
    "tlpipe/outputs/report.py": (None, frozenset({"evaluate", "analyze"})),
    "tlpipe/outputs/calibration.py": (None, frozenset({"evaluate"})),
    "tlpipe/outputs/export.py": (None, frozenset({"export"})),
    "tlpipe/outputs/card.py": (None, frozenset({"export"})),
    **{
        f"tlpipe/outputs/{name}.py": (None, frozenset({"export"}))
        for name in ("export_scores", "exported_run", "litert", "quantize")
    },
    # The `tlpipe` command (predict, summary, review): no stage imports it, it reads the
    # pipeline's outputs; review.py runs the pipeline through DVC.
    "tlpipe/outputs/cli.py": (None, frozenset()),
    "tlpipe/outputs/review.py": (None, frozenset()),
    "tlpipe/outputs/issues.py": (None, frozenset()),
    # `tlpipe lr-find` and `tlpipe tune`: commands over the pipeline, no stage's input.
    **{
        f"tlpipe/tuning/{name}.py": (None, frozenset())
        for name in ("__init__", "commands", "dvcops", "lr_find", "search", "space")
    },
    "tlpipe/outputs/dvcrun.py": (
        None,
        frozenset(),
    ),  # DVC for `make demo`, a spurious warning left out
    # The package inits run before every stage but only call startup.py, which quiets TensorFlow's
    # start-up notices and checks the interpreter (stderr and exit status, never an output):
    # declaring them would rerun the whole pipeline for a logging tweak. The guard test below
    # fails if they ever do more, and then they must become deps of every stage.
    "stages/__init__.py": (None, frozenset()),
    "tlpipe/__init__.py": (None, frozenset()),
    # startup.py: also the export stage's, which quiets the LiteRT converter's notices with it.
    "tlpipe/startup.py": (None, frozenset({"export"})),
}
# The one exemption: keys a stage reads but does not declare. `cluster` says where `features`
# computes (this process or Ray actors), not what: tests/test_cluster.py shows both engines write
# the same bytes, so switching engines must rerun nothing. key -> (another valid value, the stage
# that reads it); changing one must mark no stage changed.
UNDECLARED: dict[str, tuple[object, str]] = {
    "cluster.engine": ("ray", "features"),
    "cluster.address": ("10.0.0.1:6379", "features"),
}
CODE = ("stages/", "tlpipe/")
MODULES = sorted(key for key in READERS if key.startswith(CODE))
KEYS = sorted(key for key in READERS if not key.startswith(CODE))


def leaves(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in node.items():
        keys |= (
            leaves(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}"}
        )
    return keys


def test_table_covers_every_params_key_and_every_stage_module():
    assert set(KEYS) | set(UNDECLARED) == leaves(yaml.safe_load(SHIPPED_PARAMS))
    assert not set(KEYS) & set(UNDECLARED)
    modules = {
        str(path.relative_to(REPO)) for folder in CODE for path in (REPO / folder).rglob("*.py")
    }
    assert set(MODULES) == modules


def imported_names(tree: ast.AST) -> set[str]:
    """Dotted names of the modules a file imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # from tlpipe import x
    return names


def module_path(name: str) -> str | None:
    """stages/x.py or tlpipe/[package/]x.py for a dotted module name, if it is one of ours (a
    package itself, `tlpipe.core`, is its docstring-only __init__: no module)."""
    parts = name.split(".")
    if f"{parts[0]}/" not in CODE:
        return None
    for depth in range(len(parts), 1, -1):
        path = "/".join(parts[:depth]) + ".py"
        if (REPO / path).is_file():
            return path
    return None


def declared_code(stage: str) -> set[str]:
    """The stages/ and tlpipe/ deps dvc.yaml lists for `stage`, a folder as its modules."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = set()
    for dep in stages[stage]["deps"]:
        if dep.startswith(CODE) and (REPO / dep).is_dir():
            declared |= {
                str(path.relative_to(REPO))
                for path in (REPO / dep).glob("*.py")
                if path.name != "__init__.py"
            }
        elif dep.startswith(CODE):
            declared.add(dep)
    return declared


def code_imports(module: str) -> set[str]:
    """Our modules that `module` imports, directly or transitively (package __init__ aside)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in imported_names(ast.parse((REPO / todo.pop()).read_text())):
            path = module_path(name)
            if path and path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


def test_module_rows_match_the_import_graph():
    """The module rows of the table are what the code imports: `python -m stages.<stage>` runs
    them."""
    importers = {module: set() for module in MODULES}
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        for module in code_imports(f"stages/{stage}.py") | {f"stages/{stage}.py"}:
            importers[module].add(stage)
        for dep in stages[stage]["deps"]:  # a declared folder: its __init__.py is a dep too
            if dep.startswith(CODE) and (REPO / dep / "__init__.py").is_file():
                importers[f"{dep}/__init__.py"].add(stage)
    assert {module: set(READERS[module][1]) for module in MODULES} == importers


def test_dvc_yaml_declares_exactly_the_code_each_stage_runs():
    """Each stage's code deps in dvc.yaml: its module and every module it imports, no more."""
    for stage in STAGES:
        expected = code_imports(f"stages/{stage}.py") | {f"stages/{stage}.py"}
        assert declared_code(stage) == expected, stage


def test_imports_run_one_way():
    """Stages import tlpipe, tlpipe never imports a stage, no stage imports another, no loops."""
    for module in MODULES:
        imported = code_imports(module)
        assert not {path for path in imported if path.startswith("stages/")}, module
        assert module not in imported, f"{module} imports itself through a loop"


def test_package_inits_only_choose_kernels_quiet_tensorflow_and_check_the_interpreter():
    """The package inits run before every stage. They may quiet TensorFlow's start-up and check
    the interpreter (startup.py: stderr and exit status only, so no stage declares it), and turn
    oneDNN on (cpu.py: that changes results, so every stage declares cpu.py). Both modules stay
    standard-library only, so importing tlpipe stays light and works under any `python`."""
    quiet = "quiet_tensorflow_start_up"
    check = "require_project_environment"
    for init, expected in (
        (
            "tlpipe/__init__.py",
            [
                "from tlpipe.core.cpu import use_onednn",
                f"from tlpipe.startup import {quiet}",
                "use_onednn()",
                f"{quiet}()",
            ],
        ),
        (
            "stages/__init__.py",
            [f"from tlpipe.startup import {quiet}, {check}", f"{check}()", f"{quiet}()"],
        ),
    ):
        body = ast.parse((REPO / init).read_text()).body
        docstring = (ast.Expr, ast.Constant)
        code = [
            ast.unparse(node)
            for node in body
            if not (isinstance(node, docstring[0]) and isinstance(node.value, docstring[1]))
        ]
        assert code == expected, (
            f"{init} runs before every stage: if it does more than choose the CPU kernels, quiet "
            "TensorFlow's start-up and check the interpreter, add it to every stage's deps in "
            "dvc.yaml and to all stages in READERS"
        )
    assert READERS["tlpipe/core/cpu.py"] == (None, STAGES)
    for init in sorted((REPO / "tlpipe").glob("*/__init__.py")):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init}: a docstring only"
    for module in ("tlpipe/startup.py", "tlpipe/core/cpu.py"):
        imported = imported_names(ast.parse((REPO / module).read_text()))
        assert {name.split(".")[0] for name in imported} <= sys.stdlib_module_names | {
            "__future__"
        }, module


def test_data_paths_in_dvc_yaml_are_those_of_tlpipe_paths():
    """dvc.yaml repeats the data paths (DVC tracks them); each must be one tlpipe.core.paths
    defines."""
    from tlpipe.core import paths

    defined = {str(value) for value in vars(paths).values() if isinstance(value, Path)}
    for split in paths.SPLITS:
        for function in (
            paths.prepared_images,
            paths.prepared_labels,
            paths.prepared_index,
            paths.head_features,
            paths.boundary_features,
        ):
            defined.add(str(function(split)))
    defined |= {str(paths.classes_file(folder)) for folder in (paths.RAW_DIR, paths.PREPARED_DIR)}
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    named = set()
    for stage in dvc["stages"].values():
        for entry in stage["deps"] + stage["outs"]:
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            if not path.startswith(CODE):
                named.add(path)
    # The one templated path: the image folder, whose placeholder is a tlpipe.core.paths path.
    assert "${data.folder}" in dvc["stages"]["download"]["deps"]
    assert "data" in dvc["stages"]["download"]["params"]
    assert SHIPPED_PARAMS_DICT["data"]["folder"] == str(paths.NO_FOLDER)
    assert (REPO / paths.NO_FOLDER).is_file()
    assert named - defined == {"${data.folder}"}


def params_read_by(stage: str) -> set[str]:
    """Top-level params sections `stages/<stage>.py` reads (`params.<section>`)."""
    tree = ast.parse((REPO / f"stages/{stage}.py").read_text())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "params"
    }


def test_undeclared_keys_are_read_only_by_their_stage_and_declared_by_none():
    """The exemption stays as narrow as it says: no stage declares `cluster`, and only the stage
    named in UNDECLARED reads it (another reader would have to be proven byte-neutral too)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for key, (_, reader) in UNDECLARED.items():
        section = key.split(".")[0]
        for stage, spec in stages.items():
            declared = spec.get("params", [])
            assert not [name for name in declared if name.split(".")[0] == section], stage
        assert {stage for stage in STAGES if section in params_read_by(stage)} == {reader}, key


def test_alternative_values_are_valid():
    for key in KEYS + sorted(UNDECLARED):
        raw = yaml.safe_load(SHIPPED_PARAMS)
        set_param(raw, key, {**READERS, **UNDECLARED}[key][0])
        parse_params(raw)  # raises ParamsError naming the key if the value is not valid


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """A copy of the project after one tiny offline run: dvc.lock written, nothing to do."""
    project = copy_project(tmp_path_factory.mktemp("invalidation"))
    run(["dvc", "exp", "run", *OFFLINE, *TINY], project)
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == UP_TO_DATE
    return project


def changed_stages(project: Path) -> set[str]:
    """The stages `dvc status` lists for a change. `check` runs every time, so it is listed as
    "always changed" whatever the change; only a change to its own deps counts here."""
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    return {stage for stage, changes in status.items() if changes != ["always changed"]}


def params_text_with(text: str, key: str, value: object) -> str:
    """params.yaml text with `key` set to `value`, every other value kept as it was (round trip)."""
    yaml_rt = YAML()
    data = yaml_rt.load(text)
    *sections, leaf = key.split(".")
    node = data
    for section in sections:
        node = node[section]
    assert node[leaf] != value, f"{key}: the new value must differ from the run's {node[leaf]!r}"
    node[leaf] = value
    out = io.StringIO()
    yaml_rt.dump(data, out)
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("what", sorted(READERS) + sorted(UNDECLARED))
def test_change_marks_exactly_its_readers(ran: Path, what: str):
    """A key marks its readers changed; an UNDECLARED key marks none (its reader does not
    declare it)."""
    path = ran / (what if what.startswith(CODE) else "params.yaml")
    original = path.read_bytes()
    value, expected = READERS[what] if what in READERS else (UNDECLARED[what][0], frozenset())
    try:
        if what.startswith(CODE):
            path.write_bytes(original + b"\n# invalidation probe\n")
        else:
            path.write_text(params_text_with(original.decode(), what, value))
        changed = changed_stages(ran)
    finally:
        path.write_bytes(original)
    assert changed == set(expected), f"changing {what}"
