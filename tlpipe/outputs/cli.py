"""tlpipe: classify your own images with the fine-tuned model, and look at the model's structure.

tlpipe predict photo.jpg more/photos/          one line per image: path, class, probability
tlpipe predict --top-k 3 --json photo.jpg      the three likeliest classes, as JSON
tlpipe predict --tta flip photo.jpg            averaged with the mirrored image (not for text)
tlpipe summary [--plot model.png]               layers, trainable flags, parameter counts
tlpipe review main [HEAD]                       metrics of two commits, same configuration
tlpipe issues [--top N] [--csv]                 labels that look wrong, and how to fix them
tlpipe lr-find [--start 1e-7 --end 1 --steps 100] a learning rate to fine-tune with
tlpipe tune [--trials 6 --param 'lr=log-uniform:1e-5,1e-3'] an Optuna search of DVC experiments
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

from tlpipe.compute.archives import load_model, load_model_info
from tlpipe.compute.tta import TTA_CHOICES, predict_probabilities
from tlpipe.core.paths import MODEL_FILE
from tlpipe.core.runtime import UserError, first_line, run_stage
from tlpipe.data.images import IMAGE_SUFFIXES, UNREADABLE_IMAGE, read_image
from tlpipe.tuning.commands import add_lr_find, add_tune, lr_find, tune


def build_parser() -> argparse.ArgumentParser:
    """The `tlpipe` command: one subcommand per job, each built by its own function below."""
    parser = argparse.ArgumentParser(
        prog="tlpipe",
        description="Use the model trained by the DVC pipeline "
        "(run `dvc repro` or `make demo` first).",
    )
    parser.add_argument("--version", action="version", version=f"tlpipe {version('tlpipe')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_predict(commands)
    add_summary(commands)
    add_review(commands)
    add_issues(commands)
    add_lr_find(commands)
    add_tune(commands)
    return parser


def add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="classify image files or folders of images",
        description="Classify images (JPEG, PNG, ...; any size, grey or colour) with the same "
        "preprocessing as training. Prints one line per image: path, class, probability. "
        "Unreadable files are reported on stderr and the rest are still classified; "
        "the exit status is 1 if any file failed.",
    )
    predict.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="an image file or a folder (searched recursively)",
    )
    output = predict.add_argument_group("output")
    output.add_argument(
        "--top-k", type=int, default=1, metavar="N", help="show the N likeliest classes (default 1)"
    )
    output.add_argument(
        "--json", action="store_true", help="print one JSON list instead of text lines"
    )
    model = predict.add_argument_group("model")
    add_model_argument(model)
    model.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="images per forward pass (default 32)",
    )
    model.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default="none",
        help="test-time augmentation: none (default), or flip: the mean of the probabilities of "
        "each image and of its horizontal mirror (twice the time; wrong for digits, text and "
        "anything a mirror changes)",
    )


def add_model_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--model, the model file a subcommand reads (predict, summary)."""
    parser.add_argument(
        "--model", type=Path, default=MODEL_FILE, help=f"model file (default {MODEL_FILE})"
    )


def add_summary(commands: argparse._SubParsersAction) -> None:
    summary = commands.add_parser(
        "summary",
        help="show the model's layers, trainable flags and parameter counts",
        description="Print every layer with its output shape, parameter count and whether "
        "fine-tuning trained it; optionally draw the architecture (needs graphviz).",
    )
    add_model_argument(summary)
    summary.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="also draw the architecture to FILE.png"
    )


def add_review(commands: argparse._SubParsersAction) -> None:
    review = commands.add_parser(
        "review",
        help="compare the pipeline's metrics on two commits, run with the same configuration",
        description="Run the pipeline on BASE and on HEAD with the same overrides (by default "
        "the offline demo's, from the Makefile) in a throw-away clone sharing this repository's "
        "DVC cache, and print Markdown: the metrics of both, the params HEAD changes, and which "
        "stages ran or came from DVC's run cache. DVC's own output goes to stderr.",
    )
    review.add_argument("base", metavar="BASE", help="the commit to compare with (e.g. main)")
    review.add_argument(
        "head", metavar="HEAD", nargs="?", default="HEAD", help="the commit to review (HEAD)"
    )
    review.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="an override for both sides, as `dvc exp run -S` takes it (repeatable); "
        "replaces the demo's",
    )


def add_issues(commands: argparse._SubParsersAction) -> None:
    issues = commands.add_parser(
        "issues",
        help="list the training and validation labels that look wrong (from `analyze`)",
        description="Print metrics/analysis/label_issues.csv, most likely wrong first, and for "
        "folder datasets the `mv` command that moves each file to its suggested class folder. "
        "Nothing is moved: look at the image first (metrics/analysis/label_issues.png).",
    )
    output = issues.add_argument_group("output")
    output.add_argument(
        "--top", type=int, default=20, metavar="N", help="show the first N (default 20; 0: all)"
    )
    output.add_argument(
        "--csv", action="store_true", help="print CSV (with a `command` column) instead"
    )


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, plus the image files found under each folder named, in a stable order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            files.append(path)
    return files


def model_info(model_path: Path) -> dict:
    """Backbone name, input size and class names stored next to the model by `finetune`."""
    if not model_path.exists():
        raise UserError(
            f"no model at {model_path} (looked in {model_path.resolve().parent}): run `dvc repro` "
            "in the project's folder, or pass --model PATH to a model.keras that finetune wrote"
        )
    info_path = model_path.with_suffix(".json")
    if not info_path.exists():
        raise UserError(
            f"{info_path} is missing: it is written with {model_path} by the finetune stage "
            "(run `dvc repro`)"
        )
    return load_model_info(info_path)


def predict(args: argparse.Namespace) -> int:
    from tlpipe.data.images import to_model_input

    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top-k and --batch-size must be at least 1")
    # Everything that can be checked without TensorFlow is checked before loading the model.
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        raise UserError(f"no such file or folder: {', '.join(missing)}")
    files = image_files(args.paths)
    if not files:
        raise UserError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, args.paths))}"
        )
    info = model_info(args.model)
    model = load_model(args.model)
    if tuple(model.output_shape[1:]) != (len(info["classes"]),):
        # finetune writes model.keras, then model.json: a run in between can pair two runs' files
        raise UserError(
            f"{args.model} has {model.output_shape[-1]} outputs but "
            f"{args.model.with_suffix('.json')} names {len(info['classes'])} classes: written by "
            "different runs (or rewritten while being read); run `dvc repro`, then try again"
        )
    classes, top_k = info["classes"], min(args.top_k, len(info["classes"]))
    results, failed = [], 0
    # A batch at a time: decode, resize, classify, print, so memory does not grow with the files.
    for start in range(0, len(files), args.batch_size):
        readable: list[tuple[Path, np.ndarray]] = []
        for path in files[start : start + args.batch_size]:
            try:
                image = read_image(path, None)
            except UNREADABLE_IMAGE as error:  # not found, not an image, truncated
                failed += 1
                reason = first_line(error)
                print(f"error: {path}: not a readable image ({reason})", file=sys.stderr)
                continue
            readable.append((path, to_model_input(image[np.newaxis], info["image_size"])[0]))
        if not readable:
            continue
        probabilities = predict_probabilities(
            model, np.stack([image for _, image in readable]), args.tta
        )
        for (path, _), row in zip(readable, probabilities, strict=True):
            best = np.argsort(row)[::-1][:top_k]
            result = {
                "path": str(path),
                "predictions": [{"class": classes[i], "probability": float(row[i])} for i in best],
            }
            if args.json:
                results.append(result)
            else:
                ranked = "  ".join(
                    f"{p['class']}\t{p['probability']:.4f}" for p in result["predictions"]
                )
                print(f"{result['path']}\t{ranked}", flush=True)

    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def summary(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    model.summary(show_trainable=True, expand_nested=True)
    if args.plot:
        import keras

        try:
            keras.utils.plot_model(
                model,
                to_file=str(args.plot),
                show_shapes=True,
                show_trainable=True,
                expand_nested=False,
            )
        except ImportError:
            raise UserError(
                "--plot needs graphviz (the `dot` program) and pydot: "
                "e.g. `apt-get install graphviz`"
            ) from None
        print(f"architecture drawn to {args.plot}")
    return 0


def review(args: argparse.Namespace) -> int:
    from tlpipe.outputs.review import review as review_commits

    print(review_commits(Path.cwd(), args.base, args.head, args.overrides), end="")
    return 0


def issues(args: argparse.Namespace) -> int:
    from tlpipe.outputs.issues import format_issues, image_folder, read_issues

    if args.top < 0:
        raise UserError(f"--top must be 0 (all) or more; got {args.top}")
    print(format_issues(read_issues(), image_folder(), top=args.top, as_csv=args.csv), end="")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    commands = {
        "predict": predict,
        "summary": summary,
        "review": review,
        "issues": issues,
        "lr-find": lr_find,
        "tune": tune,
    }
    command = commands[args.command]

    def run() -> None:
        code = command(args)
        if code:
            sys.exit(code)

    interrupted = {
        "tune": "interrupted: every finished trial is in tune/study.db; `tlpipe tune` continues "
        "the study (the trial that was running is marked failed)"
    }
    run_stage(run, interrupted=interrupted.get(args.command, "interrupted"))


if __name__ == "__main__":
    main()
