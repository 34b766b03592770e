"""The acceptance benchmark: the stages' own code, timed on this machine, ratios measured in one
run (a much shorter path through the same code than the pipeline, for timing it).

    python -m benchmarks [--quick] [--only features,memory]      (or python benchmarks/run.py)

Studies (one module each): features (stage path vs the notebook loop vs onnxruntime), finetune
(cached vs full epochs), precision (bfloat16 vs float32), memory (peak RSS at N and 10N), ray
(two loopback nodes vs one process), analysis (injected label noise and leaks found, analyze's
time against features') and recipe (the whole job vs seed 003's notebook; not in the
default run: minutes of training). The table goes to stdout first; the very last line of stdout is
one JSON object. Measurements: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository, not benchmarks/, goes on the path
    ROOT = Path(__file__).resolve().parents[1]
    sys.path[0] = str(ROOT)

from benchmarks import (
    analysis,
    features,
    finetune,
    harness,
    memory,
    precision,
    ray_nodes,
    versus_recipe,
)
from benchmarks.table import header, render

STUDIES = {
    "features": features,
    "finetune": finetune,
    "precision": precision,
    "memory": memory,
    "ray": ray_nodes,
    "analysis": analysis,
    "recipe": versus_recipe,
}
DEFAULT = ("features", "finetune", "precision", "memory", "ray", "analysis")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    group = parser.add_argument_group("what to run")
    group.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, scaled to this machine's matmul rate: minutes on any CPU",
    )
    group.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated studies among {', '.join(STUDIES)} (default: all but recipe)",
    )
    group.add_argument(
        "--at-scale",
        nargs=2,
        type=int,
        metavar=("IMAGES", "SIZE"),
        help="instead: the whole pipeline on IMAGES generated images at SIZE px",
    )
    sizes = parser.add_argument_group("sizes (default: params.yaml)")
    sizes.add_argument("--batch-size", type=int, help="features batch size")
    sizes.add_argument("--finetune-batch-size", type=int, help="fine-tuning batch size")
    recipe = parser.add_argument_group("recipe study")
    recipe.add_argument(
        "--recipe-rounds",
        type=int,
        default=1,
        help="alternating rounds of pipeline and recipe (best of each kept)",
    )
    recipe.add_argument(
        "--book-images", type=int, help="data.limit of the book configuration (default: all)"
    )
    recipe.add_argument(
        "--book-finetune-epochs", type=int, default=4, help="finetune.epochs of the book's"
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := set(args.only) - set(STUDIES):
        parser.error(f"--only: unknown studies {sorted(unknown)}; expected some of {list(STUDIES)}")
    return args


def book_overrides(args: argparse.Namespace) -> dict:
    epochs = args.book_finetune_epochs
    limit = {"data.limit": args.book_images} if args.book_images else {}
    return {"finetune.epochs": epochs, "finetune.patience": epochs} | limit


def run_studies(args: argparse.Namespace, workdir: Path) -> tuple[dict, dict]:
    from tlpipe.core.params import load_params

    params = load_params(harness.ROOT / "params.yaml")
    mode = "quick" if args.quick else "full"
    scale, gflops = harness.work_scale(mode)
    ctx = harness.Context(
        mode=mode,
        workdir=workdir,
        scale=scale,
        batch_size=args.batch_size or params.features.batch_size,
        finetune_batch=args.finetune_batch_size or params.finetune.batch_size,
    )
    ctx.results["machine"] = harness.machine() | {
        "float32_matmul_gflops_at_start": round(gflops, 1)
    }
    sections = {}
    for name in args.only:
        started = time.perf_counter()
        print(f"benchmark: {name} ...", file=sys.stderr, flush=True)
        kwargs = (
            {"rounds": args.recipe_rounds, "book": book_overrides(args)} if name == "recipe" else {}
        )
        ctx.results[name], sections[name] = STUDIES[name].run(ctx, **kwargs)
        ctx.results[name]["study_s"] = round(time.perf_counter() - started, 1)
    ctx.results["sizes"] = {
        "mode": mode,
        "scale": round(scale, 3),
        "batch_size": ctx.batch_size,
        "finetune_batch_size": ctx.finetune_batch,
    }
    return ctx.results, sections


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The stages' progress bars would interleave the table. Set here, when the benchmark runs, not
    # when the package is imported: tests import it, and their stage processes inherit os.environ.
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="tlpipe-bench-") as tmp:
        if args.at_scale:
            from benchmarks.scale import pipeline_at_scale

            print(json.dumps(pipeline_at_scale(Path(tmp), *args.at_scale)))
            return
        load, started = harness.OtherLoad(), time.perf_counter()
        results, sections = run_studies(args, Path(tmp))
    import tensorflow as tf

    results |= load.summary() | {
        "wall_s": round(time.perf_counter() - started, 1),
        "tf_version": tf.__version__,
    }
    mode = results["sizes"]["mode"]
    footer = [
        f"other processes' CPU load {results['other_cpu_load']:.2f} CPUs (0 = machine to "
        f"ourselves); load average {results['loadavg_start']} -> {results['loadavg_end']}; "
        f"sizes x{results['sizes']['scale']}; wall time {results['wall_s']:.0f} s"
    ]
    print(render(header(results["machine"], mode, tf.__version__), sections, footer))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
