"""Exact invalidation: every params.yaml key and every stages/*.py module marks exactly its readers changed.

After one tiny offline run (dvc.lock written, `dvc status` clean), each params.yaml leaf is set to
another valid value, or a comment is appended to each stage module, and `dvc status --json` must
name exactly the stages in READERS. Only directly affected stages are compared: DVC reports a
downstream stage as changed only once an upstream output has really changed, which `status` does
not simulate.
"""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from stages.params import parse_params
from tests.conftest import OFFLINE, REPO, SHIPPED_PARAMS, TINY, copy_project, run, set_param

STAGES = frozenset({"download", "prepare", "features", "train", "finetune", "evaluate"})
SEEDED = frozenset({"download", "prepare", "features", "train", "finetune"})

# THE table. params.yaml key -> (another valid value, the stages that read the key);
# stages/*.py module -> (None, the stages that import it, directly or through other modules).
READERS: dict[str, tuple[object, frozenset[str]]] = {
    "seed": (7, SEEDED),  # evaluate is not seeded: it only predicts
    "lr": (3e-5, frozenset({"finetune"})),
    "data.dataset": ("mnist", frozenset({"download"})),
    "data.limit": (500, frozenset({"download"})),
    "data.image_size": (64, frozenset({"download"})),
    "prepare.image_size": (48, frozenset({"prepare"})),
    "prepare.val_fraction": (0.15, frozenset({"prepare"})),
    "prepare.test_fraction": (0.25, frozenset({"prepare"})),
    # prepare: preprocess_input; features: the conv base; finetune: models/model.json and `auto`.
    "backbone.name": ("resnet50", frozenset({"prepare", "features", "finetune"})),
    "backbone.weights": ("imagenet", frozenset({"features"})),
    "features.batch_size": (64, frozenset({"features"})),
    "train.epochs": (4, frozenset({"train"})),
    "train.batch_size": (32, frozenset({"train"})),
    "train.lr": (5e-4, frozenset({"train"})),
    "train.units": (128, frozenset({"train"})),
    "train.dropout": (0.3, frozenset({"train"})),
    "train.patience": (2, frozenset({"train"})),
    "finetune.epochs": (3, frozenset({"finetune"})),
    "finetune.batch_size": (32, frozenset({"finetune"})),
    "finetune.unfreeze_from": ("block4_conv1", frozenset({"features", "finetune"})),  # the cut is cached by features
    "finetune.patience": (2, frozenset({"finetune"})),
    "finetune.augment": (True, frozenset({"finetune"})),
    "evaluate.batch_size": (64, frozenset({"evaluate"})),
    "stages/download.py": (None, frozenset({"download"})),
    "stages/prepare.py": (None, frozenset({"prepare"})),
    "stages/features.py": (None, frozenset({"features"})),
    "stages/train.py": (None, frozenset({"train"})),
    "stages/finetune.py": (None, frozenset({"finetune"})),
    "stages/evaluate.py": (None, frozenset({"evaluate"})),
    "stages/backbone.py": (None, frozenset({"prepare", "features", "finetune"})),
    "stages/training.py": (None, frozenset({"train", "finetune"})),
    "stages/report.py": (None, frozenset({"train", "finetune", "evaluate"})),  # via training.py for train, finetune
    "stages/params.py": (None, STAGES),
    "stages/runtime.py": (None, STAGES),  # also through params.py and storage.py
    "stages/storage.py": (None, STAGES),
    # The `tlpipe` command (predict, summary): no stage imports it, it reads the pipeline's outputs.
    "stages/cli.py": (None, frozenset()),
    # Runs before every stage but only sets a default TF log level (stderr noise, never an output);
    # declaring it would rerun the whole pipeline for a logging tweak. The guard test below fails
    # if it ever does more, and then it must become a dep of every stage.
    "stages/__init__.py": (None, frozenset()),
}
MODULES = sorted(key for key in READERS if key.startswith("stages/"))
KEYS = sorted(key for key in READERS if not key.startswith("stages/"))


def leaves(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in node.items():
        keys |= leaves(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}"}
    return keys


def test_table_covers_every_params_key_and_every_stage_module():
    assert set(KEYS) == leaves(yaml.safe_load(SHIPPED_PARAMS))
    assert set(MODULES) == {f"stages/{path.name}" for path in (REPO / "stages").glob("*.py")}


def imported_names(tree: ast.AST) -> set[str]:
    """Dotted names of the modules a file imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # from stages import report
    return names


def stage_imports(module: str) -> set[str]:
    """stages/*.py files that `module` imports, directly or transitively (package __init__ aside)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in imported_names(ast.parse((REPO / todo.pop()).read_text())):
            parts = name.split(".")
            path = f"stages/{parts[1]}.py" if len(parts) > 1 and parts[0] == "stages" else None
            if path and (REPO / path).is_file() and path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


def test_module_rows_match_the_import_graph():
    """The module rows of the table are what the code imports: `python -m stages.<stage>` runs them."""
    importers = {module: set() for module in MODULES}
    for stage in STAGES:
        for module in stage_imports(f"stages/{stage}.py") | {f"stages/{stage}.py"}:
            importers[module].add(stage)
    importers["stages/__init__.py"] = set()  # see the table and the guard below
    assert {module: set(READERS[module][1]) for module in MODULES} == importers


def test_package_init_only_sets_the_log_level():
    """stages/__init__.py stays out of every stage's deps only while it cannot change an output."""
    body = ast.parse((REPO / "stages/__init__.py").read_text()).body
    code = [ast.unparse(node) for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert code == ["import os", "os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')"], (
        "stages/__init__.py runs before every stage: if it does more than set the log level, add it to "
        "every stage's deps in dvc.yaml and to all stages in READERS"
    )


def test_alternative_values_are_valid():
    for key in KEYS:
        raw = yaml.safe_load(SHIPPED_PARAMS)
        set_param(raw, key, READERS[key][0])
        parse_params(raw)  # raises ParamsError naming the key if the value is not valid


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """A copy of the project after one tiny offline run: dvc.lock written, nothing to do."""
    project = copy_project(tmp_path_factory.mktemp("invalidation"))
    run(["dvc", "exp", "run", *OFFLINE, *TINY], project)
    assert changed_stages(project) == set()
    return project


def changed_stages(project: Path) -> set[str]:
    result = run(["dvc", "status", "--json"], project)
    return set(json.loads(result.stdout))


def with_value(text: str, key: str, value: object) -> str:
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
@pytest.mark.parametrize("what", sorted(READERS))
def test_change_marks_exactly_its_readers(ran: Path, what: str):
    path = ran / (what if what.startswith("stages/") else "params.yaml")
    original = path.read_bytes()
    try:
        if what.startswith("stages/"):
            path.write_bytes(original + b"\n# invalidation probe\n")
        else:
            path.write_text(with_value(original.decode(), what, READERS[what][0]))
        changed = changed_stages(ran)
    finally:
        path.write_bytes(original)
    assert changed == set(READERS[what][1]), f"changing {what}"
