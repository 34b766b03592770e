"""The documentation: the MkDocs site builds without a warning, and every command and repository
file that the README and the site name exists.

"Exists" means: a `make` target is in the Makefile; a `tlpipe` subcommand and its options are in
its parser; a `dvc` subcommand is one DVC has; `python -m <module>` names a module here; a path
that starts at one of the repository's folders or files is there, or, for pipeline outputs
(data/, models/, metrics/), is one dvc.yaml or tlpipe/core/paths.py defines.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, VENV_BIN
from tlpipe.core import paths
from tlpipe.outputs.cli import build_parser

PAGES = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
# Material for MkDocs 9.8 prints an end-of-life banner on every build; it is not a build warning.
QUIET_BANNER = {"NO_MKDOCS_2_WARNING": "1"}
REPO_ROOTS = (
    "benchmarks/",
    "docs/",
    "stages/",
    "tests/",
    "tlpipe/",
    ".ci/",
    ".dvc/",
    ".github/",
)
REPO_FILES = (
    "Makefile",
    "dvc.yaml",
    "params.yaml",
    "params.schema.json",
    "pyproject.toml",
    "mkdocs.yml",
    "README.md",
)
OUTPUT_ROOTS = ("data/", "models/", "metrics/")
# Named by the pages but made by others: DVC's own folders, and the user's image folder of the
# "own images" example (`dvc add data/images`).
MADE_ELSEWHERE = {".dvc/tmp", ".dvc/cache", "data/images", "data/images.dvc"}
CODE_SPAN = re.compile(r"`([^`\n]+)`")
BLOCK = re.compile(r"^```(bash|console)\n(.*?)^```", re.S | re.M)


def test_the_site_builds_without_warnings(tmp_path):
    result = subprocess.run(
        [str(VENV_BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, **QUIET_BANNER},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site/trusted/index.html").is_file()


def named_paths(text: str) -> set[str]:
    """Repository paths in code spans and code blocks: words that start at a top folder or file."""
    words = set()
    for span in CODE_SPAN.findall(text) + [body for _, body in BLOCK.findall(text)]:
        words |= set(re.split(r"[\s\"'(),=:;\[\]]+", span))
    named = set()
    for word in words:
        word = word.rstrip(".")
        if any(mark in word for mark in "<>*{}$"):
            continue  # a placeholder or a pattern, not one file
        if word.startswith(REPO_ROOTS + OUTPUT_ROOTS) or word in REPO_FILES:
            named.add(word)
    return named


def pipeline_outputs() -> set[str]:
    """Every output path dvc.yaml and tlpipe.core.paths define, and the folders above them."""
    defined = {str(value) for value in vars(paths).values() if isinstance(value, Path)}
    for split in paths.SPLITS:
        for function in (paths.head_features, paths.boundary_features):
            defined.add(str(function(split)))
        for function in (paths.prepared_images, paths.prepared_labels, paths.prepared_index):
            defined.add(str(function(split)))
        defined |= {str(paths.raw_images(split)), str(paths.raw_labels(split))}
    defined |= {str(paths.source_file()), str(paths.classes_file(paths.RAW_DIR))}
    for name in (paths.SAVED_MODEL_NAME, paths.LITERT_NAME, paths.ONNX_NAME, paths.LABELS_NAME):
        defined.add(str(paths.EXPORT_DIR / name))
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for stage in pipeline["stages"].values():
        for entry in stage.get("outs", []) + stage.get("deps", []):
            defined.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    defined |= set(pipeline["metrics"])
    folders = {str(parent) for path in defined for parent in Path(path).parents}
    return defined | folders


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_repository_path_a_page_names_exists(page):
    outputs = pipeline_outputs()
    missing = []
    for name in sorted(named_paths(page.read_text())):
        clean = name.rstrip("/")
        if clean in MADE_ELSEWHERE:
            continue
        if name.startswith(OUTPUT_ROOTS):
            if clean not in outputs and not (REPO / clean).exists():
                missing.append(name)
        elif not (REPO / clean).exists():
            missing.append(name)
    assert not missing, f"{page.name} names files that do not exist: {missing}"


def commands(text: str) -> list[list[str]]:
    """The commands of the page's bash and console blocks, split as the shell would, one per
    command (`a && b` gives two); console blocks count only their `$ ` lines."""
    found = []
    for kind, body in BLOCK.findall(text):
        for line in body.splitlines():
            if kind == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"&&|\|\||;|\|", line):
                try:
                    words = shlex.split(part)
                except ValueError:
                    continue
                words = [word for word in words if "=" not in word or word.startswith("-")]
                if words:
                    found.append(words)
    return found


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, re.M))


def tlpipe_options() -> dict[str, set[str]]:
    parser = build_parser()
    (subparsers,) = [action for action in parser._actions if action.dest == "command"]
    return {
        name: {option for action in sub._actions for option in action.option_strings}
        for name, sub in subparsers.choices.items()
    }


def dvc_subcommands() -> set[str]:
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), "--help"], capture_output=True, text=True, check=True
    )
    names = re.findall(r"^ {4}(\w[\w-]*)(?: \((\w+)\))?", result.stdout, re.M)
    return {name for pair in names for name in pair if name}  # `experiments (exp)`: both


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_command_a_page_shows_exists(page):
    targets, options, dvc = makefile_targets(), tlpipe_options(), dvc_subcommands()
    wrong = []
    for words in commands(page.read_text()):
        program = Path(words[0]).name
        if program == "make" and len(words) > 1 and words[1] not in targets:
            wrong.append(words)
        elif program == "tlpipe" and len(words) > 1 and not words[1].startswith("-"):
            given = {word.split("=")[0] for word in words[2:] if word.startswith("-")}
            if words[1] not in options or not given <= options[words[1]] | {"-h", "--help"}:
                wrong.append(words)
        elif program == "dvc" and len(words) > 1 and words[1] not in dvc:
            wrong.append(words)
        elif program.startswith("python") and words[1:2] == ["-m"]:
            module = words[2].replace(".", "/")
            if module != "pytest" and not (
                (REPO / f"{module}.py").is_file() or (REPO / module / "__init__.py").is_file()
            ):
                wrong.append(words)
    assert not wrong, f"{page.name} shows commands that do not exist: {wrong}"
