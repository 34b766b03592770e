"""Memory stays flat in the number of images: the peak RSS of each job at N and at 10N images.

- the features extraction alone, in a child, on N and 10N memory-mapped uint8 images at 32 px;
- every stage run as DVC runs it (`python -m stages.<name>`, each in its own child and folder,
  analyze included) and
  `tlpipe predict` on a photo folder, at 150 px, on 1x and 10x synthetic inputs (tests/project.py);
- the bytes prepare and features write per 224 px image, with float32 and float16 caches.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from benchmarks.harness import Context, run_child, write_pixels
from benchmarks.table import Row
from tests.project import write_params, write_prepared

SIZE = 150  # px: what the Keras transfer-learning guide uses
BATCH = 8  # small enough that 1x fills a batch: only growth in the number of images is tested
RSS_N = {"quick": 500, "full": 2000}
# images per stage at 1x: cheap stages get many, so that holding their data in memory would show;
# features, evaluate and predict run the full conv base per image (scaled to the machine)
QUICK_STAGE_N = dict(
    download=200,
    download_tfds=200,
    prepare=200,
    features=40,
    train=2000,
    finetune=120,
    evaluate=16,
    analyze=400,  # reads caches and pixels; Grad-CAM runs the model on a fixed few images only
    predict=16,
)
STAGE_N = {"quick": QUICK_STAGE_N, "full": {stage: 2 * n for stage, n in QUICK_STAGE_N.items()}}
HEAVY = ("features", "finetune", "evaluate", "predict")


def project(root: Path, **changes: object) -> Path:
    """An empty project folder: params for 150 px, random weights, one epoch, `changes`."""
    settings = {
        "data.dataset": "digits",
        "backbone.weights": "none",
        "prepare.image_size": SIZE,
        "train.epochs": 1,
        "finetune.epochs": 1,
        "features.batch_size": BATCH,
        "evaluate.batch_size": BATCH,
    }
    return write_params(root, settings | changes)


def write_photos(folder: Path, *, n: int, seed: int) -> None:
    """`n` random-noise JPEGs of SIZE x SIZE in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        target = folder / ("a" if i % 2 else "b") / f"{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(target)


def write_caches(root: Path, sizes: dict[str, int], name: str, shape: tuple[int, ...]) -> None:
    """Random float16 feature caches (`name`: head or boundary) as the features stage writes."""
    from tlpipe.core import paths

    path = {"head": paths.head_features, "boundary": paths.boundary_features}[name]
    rng = np.random.default_rng(len(name))
    for split, n in sizes.items():
        (root / path(split)).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / path(split), rng.normal(0, 1, (n, *shape)).astype(np.float16))


def stage_rss(root: Path, module: str, *args: str, mock_tfds: int = 0) -> float:
    return run_child("stage", root, module=module, args=list(args), mock_tfds=mock_tfds)[
        "peak_rss_mb"
    ]


def splits(n: int) -> dict[str, int]:
    return {"train": n - 2 * (n // 5), "val": n // 5, "test": n // 5}


def intake_stages(base: Path, n: dict[str, int], seed: int) -> dict[str, float]:
    """download (photo folder and tensorflow-datasets' mock CIFAR-10) and prepare."""
    from tlpipe.core import paths

    rss = {}
    root = project(base / "download", **{"data.dataset": "folder", "data.folder": "photos"})
    write_photos(root / "photos", n=n["download"], seed=seed)
    rss["download"] = stage_rss(root, "stages.download")
    root = project(base / "prepare")
    shutil.copytree(base / "download" / paths.RAW_DIR, root / paths.RAW_DIR)
    rss["prepare"] = stage_rss(root, "stages.prepare")
    root = project(base / "tfds", **{"data.dataset": "cifar10:3.0.2", "data.image_size": SIZE})
    manual = root / "tfds" / "downloads" / "manual"  # the archive tfds expects offline; the
    manual.mkdir(parents=True)  # mock data never reads it
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"")
    rss["download_tfds"] = stage_rss(root, "stages.download", mock_tfds=n["download_tfds"])
    return rss


def model_stages(base: Path, n: dict[str, int], seed: int) -> dict[str, float]:
    """features, train, finetune, evaluate and `tlpipe predict`, each on synthetic inputs."""
    from tlpipe.core import paths

    rss = {}
    root = project(base / "features")
    write_prepared(root, splits(n["features"]), SIZE, seed=seed)
    rss["features"] = stage_rss(root, "stages.features")
    shapes = {
        k: np.load(root / f("train"), mmap_mode="r").shape[1:]
        for k, f in (("head", paths.head_features), ("boundary", paths.boundary_features))
    }
    root = project(base / "train")
    write_prepared(root, splits(n["train"]), 1, seed=seed)  # labels only; the images unread
    write_caches(root, splits(n["train"]), "head", shapes["head"])
    rss["train"] = stage_rss(root, "stages.train")
    root = project(base / "finetune")
    write_prepared(root, splits(n["finetune"]), 1, seed=seed)
    write_caches(root, splits(n["finetune"]), "boundary", shapes["boundary"])
    for model in (paths.BACKBONE_FILE, paths.BOUNDARY_INFO_FILE):
        shutil.copy(base / "features" / model, root / model)
    (root / paths.HEAD_FILE).parent.mkdir(parents=True)
    shutil.copy(base / "train" / paths.HEAD_FILE, root / paths.HEAD_FILE)
    rss["finetune"] = stage_rss(root, "stages.finetune")
    root = project(base / "evaluate")
    write_prepared(root, {"test": n["evaluate"]}, SIZE, seed=seed)
    write_caches(root, {"test": n["evaluate"]}, "head", shapes["head"])
    shutil.copytree(base / "finetune" / "models", root / "models")
    rss["evaluate"] = stage_rss(root, "stages.evaluate")
    rss["analyze"] = analyze_rss(base, n["analyze"], shapes["head"], seed)
    root = base / "predict"
    write_photos(root / "photos", n=n["predict"], seed=10 + seed)
    model = str(base / "finetune" / paths.MODEL_FILE)
    args = ("predict", "--batch-size", str(BATCH), "--model", model, "photos")
    rss["predict"] = stage_rss(root, "tlpipe.outputs.cli", *args)
    return rss


def analyze_rss(base: Path, n: int, head_shape: tuple[int, ...], seed: int) -> float:
    """The analyze stage on `n` random images' pixels, head caches and test probabilities, with
    the models train and finetune wrote above (two folds: random caches have ~n/2 per class)."""
    from tlpipe.core import paths

    root = project(base / "analyze", **{"analyze.folds": 2, "analyze.batch_size": BATCH})
    write_prepared(root, splits(n), SIZE, seed=seed)
    write_caches(root, splits(n), "head", head_shape)
    rng = np.random.default_rng(seed)
    (root / paths.TEST_PROBABILITIES_FILE).parent.mkdir(parents=True)
    scores = rng.dirichlet(np.ones(2), splits(n)["test"]).astype(np.float32)
    np.save(root / paths.TEST_PROBABILITIES_FILE, scores)
    shutil.copytree(base / "finetune" / "models", root / "models")
    (root / paths.TRAIN_LIVE_DIR).mkdir(parents=True)
    shutil.copy(base / "train" / paths.TRAIN_LIVE_DIR / "metrics.json", root / paths.TRAIN_LIVE_DIR)
    (root / paths.RAW_DIR).mkdir(parents=True)  # no files.json, no raw test split: dataset rows
    return stage_rss(root, "stages.analyze")


def extraction_rss(ctx: Context, precision: str) -> dict[int, dict]:
    """The extraction alone in a child, on N and 10N memory-mapped images."""
    results = {}
    n = ctx.count(RSS_N[ctx.mode], floor=4 * ctx.batch_size)
    for count in (n, 10 * n):
        images = write_pixels(ctx.workdir / f"rss_{count}.npy", count, 32, seed=count)
        out = ctx.workdir / f"rss_out_{count}"
        out.mkdir()
        results[count] = run_child(
            "rss",
            ctx.workdir,
            images=str(images),
            batch_size=ctx.batch_size,
            workdir=str(out),
            precision=precision,
        )
        images.unlink()
        shutil.rmtree(out)
    return results


def bytes_per_image_224(workdir: Path, dtype: str) -> dict[str, float]:
    """What prepare and features write per 224 px image: prepared pixels and the two caches."""
    from tlpipe.core import paths

    root = project(
        workdir / f"bytes-{dtype}", **{"prepare.image_size": 224, "features.dtype": dtype}
    )
    write_prepared(root, {split: 4 for split in paths.SPLITS}, 224, seed=5)
    stage_rss(root, "stages.features")
    parts = {
        "prepared": lambda s: paths.PREPARED_DIR / f"{s}_x.npy",
        "boundary": paths.boundary_features,
        "head": paths.head_features,
    }
    return {
        part: sum((root / f(s)).stat().st_size for s in paths.SPLITS) / 12
        for part, f in parts.items()
    }


def run(ctx: Context) -> tuple[dict, list[Row]]:
    precision = ctx.results.get("features", {}).get("precision", "float32")
    rss = extraction_rss(ctx, precision)
    by_stage = {}
    for scale in (1, 10):
        n = {
            k: (ctx.count(v, 8) if k in HEAVY else v) * scale for k, v in STAGE_N[ctx.mode].items()
        }
        base = ctx.workdir / f"scale{scale}"
        by_stage[f"{scale}x"] = intake_stages(base, n, scale) | model_stages(base, n, scale)
    written = {dtype: bytes_per_image_224(ctx.workdir, dtype) for dtype in ("float32", "float16")}
    (n1, r1), (n10, r10) = sorted(rss.items())
    result = {
        "rss_1x_mb": round(r1["peak_rss_mb"], 1),
        "rss_10x_mb": round(r10["peak_rss_mb"], 1),
        "rss_ratio": round(r10["peak_rss_mb"] / r1["peak_rss_mb"], 3),
        "rss_n": n1,
        "stage_peak_rss_mb": {k: {s: round(v) for s, v in d.items()} for k, d in by_stage.items()},
        "rss_ratio_by_stage": {
            s: round(by_stage["10x"][s] / v, 3) for s, v in by_stage["1x"].items()
        },
        "bytes_per_image_224_by_dtype": {
            d: {p: round(b) for p, b in v.items()} for d, v in written.items()
        },
    }
    rows = [
        Row(
            f"extraction peak RSS, {n10} / {n1} images",
            f"{result['rss_ratio']:.3f}x",
            f"{r10['peak_rss_mb']:.0f} / {r1['peak_rss_mb']:.0f} MB (target <= 1.3)",
        )
    ]
    for stage, ratio in result["rss_ratio_by_stage"].items():
        mb = [result["stage_peak_rss_mb"][k][stage] for k in ("10x", "1x")]
        rows.append(
            Row(
                f"peak RSS {stage}, 10x / 1x images",
                f"{ratio:.3f}x",
                f"{mb[0]} / {mb[1]} MB (target <= 1.3)",
            )
        )
    for dtype, parts in written.items():
        rows.append(
            Row(
                f"written per 224 px image, {dtype} caches",
                f"{sum(parts.values()) / 1e3:.1f} KB",
                ", ".join(f"{p} {b / 1e3:.0f} KB" for p, b in parts.items()),
            )
        )
    return result, rows
