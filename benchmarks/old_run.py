"""Acceptance benchmark of the `features` stage (fast, memory-bounded) and of fine-tuning from its
cache.

Run from the repository root:

    python benchmarks/run.py [--quick]

On the same random "prepared" images (float32, 32x32x3) and the same seeded, randomly initialised
VGG16 conv base, it measures in one process:

- naive_img_s: the textbook way, a Python loop of `conv_base.predict(batch)` on batches of 20
  copied into a preallocated array;
- pipeline_img_s: `tlpipe.features.extract_features` (bottom/top split at block4_pool, input a
  memory-mapped .npy as the stage reads it, both outputs streamed to .npy in a temporary folder);
- ceiling_gflops: float32 4096x4096 matmul throughput in TensorFlow, and efficiency = the
  pipeline's GFLOP/s (conv MACs per image x 2 x img/s) divided by that ceiling, counting only the
  MACs whose taps touch real pixels (a 3x3 "same" convolution's taps on its zero padding are not
  computed by oneDNN; counting them, as `efficiency_all_taps` does, gave efficiencies above 1);
- rss_1x_mb, rss_10x_mb: peak RSS of a child process running extract_features on N and 10N
  memory-mapped images (each child reports its own peak, VmHWM: see `peak_rss_mb`);
- finetune_epoch_speedup: one fine-tuning epoch on a full forward pass over images (VGG16 frozen up
  to block4_pool) divided by one epoch of the same model on the cached boundary activations;
- bf16_features_speedup, bf16_finetune_speedup: bfloat16 (Keras mixed precision, as
  `features.precision` / `finetune.precision: bfloat16` run it) over float32: features
  throughput on the same images at 64 px, and a cached fine-tuning epoch (block5 and the head) at
  150 px (`bf16_finetune_speedup`) and at 64 px (`bf16_finetune_speedup_64`);
  filter_gradient_ms: one block5 filter gradient at 150 px in TensorFlow's float32 and bfloat16
  kernels and in the per-tap matmuls bfloat16 training uses instead (tlpipe/precision.py);
  efficiency_64_by_precision: each precision's features GFLOP/s (real-pixel MACs) at 64 px over
  the matmul ceiling of the same dtype;
- ray_vs_local: features throughput of the whole stage with `cluster.engine: ray` on two Ray
  nodes on loopback (one CPU each) over `engine: local` in one process, on the same cores
  (`--ray-vs-local` runs only this).

Throughputs are the best of a few repetitions after a warm-up: other processes on the machine can
only slow a repetition down, so the best one is the closest to what the code itself can do. What is
compared as a ratio (naive, pipeline and matmul; cached and full fine-tuning epochs) alternates
within each round, so a slow spell of the machine hits both sides. The load other processes put on
the CPUs during the run is reported as `other_cpu_load`.

The human-readable table goes first; the very last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # keep TensorFlow's start-up banner off the table
os.environ.setdefault(
    "TQDM_DISABLE", "1"
)  # the stage's progress bars would interleave with the table

import numpy as np  # noqa: E402
import psutil  # noqa: E402

SEED = 42
IMAGE_SHAPE = (32, 32, 3)
NAIVE_BATCH = 20
CLASSES = 10
UNFREEZE_FROM = "block5_conv1"
MATMUL_SIZE = 4096
CEILING_ROUNDS = 20  # extra matmuls for each ceiling: see matmul_seconds

MODES = {
    # images for the throughput runs, repetitions, N for the RSS children, images (<= n_images) and
    # epochs for fine-tuning
    "quick": dict(
        n_images=1280,
        reps=3,
        rss_n=500,
        finetune_n=1280,
        finetune_reps=2,
        finetune_n_64=384,
        finetune_n_150=96,
        bf16_n=256,
        bf16_finetune_n=1536,
        ray_n=2000,
    ),
    "full": dict(
        n_images=3072,
        reps=3,
        rss_n=2000,
        finetune_n=3072,
        finetune_reps=3,
        finetune_n_64=768,
        finetune_n_150=192,
        bf16_n=512,
        bf16_finetune_n=3072,
        ray_n=10000,
    ),
}


# ------------------------------------------------------------------------------------------ helpers
def project_params():
    """The project's params.yaml, validated as the stages read it."""
    from tlpipe.params import load_params

    return load_params(ROOT / "params.yaml")


def seeded_vgg16(input_shape: tuple[int, int, int] = IMAGE_SHAPE):
    import keras

    from tlpipe.runtime import seed_everything

    seed_everything(SEED)  # what every stage does first: same weights, deterministic ops
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=input_shape)


def conv_macs_per_image(model, *, real_pixels_only: bool = False) -> int:
    """Multiply-accumulates of every Conv2D layer for one image: H_out*W_out*C_out*kH*kW*C_in.

    With `real_pixels_only`, the taps of a "same" convolution that fall on its zero padding are not
    counted: oneDNN does not compute them, and on the 2x2 and 4x4 maps of block5 at 32 px they are
    more than half of all taps, which made the all-taps count exceed the machine's ceiling.
    """
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            k_h, k_w, c_in, c_out = layer.kernel.shape
            if real_pixels_only and layer.padding == "same" and layer.strides == (1, 1):
                macs += taps_on_pixels(height, k_h) * taps_on_pixels(width, k_w) * c_in * c_out
            else:
                macs += height * width * c_out * k_h * k_w * c_in
    return int(macs)


def taps_on_pixels(n: int, k: int) -> int:
    """Kernel taps over all n output positions of one axis that land inside the input (stride 1,
    "same" padding: k // 2 zeros on each side)."""
    r = k // 2
    return sum(min(p + r, n - 1) - max(p - r, 0) + 1 for p in range(n))


def write_random_images(path: Path, n: int, seed: int) -> None:
    """A prepared-looking float32 .npy (VGG16 "caffe" range), written in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *IMAGE_SHAPE))
    for start in range(0, n, 2048):
        stop = min(start + 2048, n)
        out[start:stop] = rng.uniform(-124.0, 152.0, size=(stop - start, *IMAGE_SHAPE)).astype(
            np.float32
        )
    out.flush()
    del out


def best_of(runs: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Shortest wall time of each run over `reps` rounds; the runs alternate within each round, so a
    slow spell of this shared machine hits all of them alike and their ratios stay fair."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


class OtherLoad:
    """How many CPUs' worth of work other processes did while we ran (0 = machine to ourselves)."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.started = time.perf_counter()
        self.machine0 = self._machine_busy()
        self.own0 = self._own_cpu()

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return (
            t.user
            + t.nice
            + t.system
            + getattr(t, "irq", 0)
            + getattr(t, "softirq", 0)
            + getattr(t, "steal", 0)
        )

    def _own_cpu(self) -> float:
        t = self.me.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def cpus(self) -> float:
        wall = time.perf_counter() - self.started
        other = (self._machine_busy() - self.machine0) - (self._own_cpu() - self.own0)
        return max(other, 0.0) / max(wall, 1e-9)


# ------------------------------------------------------------------------------------- measurements
def naive_loop(conv_base, images: np.ndarray) -> tuple[Callable[[], None], np.ndarray]:
    """(run, its output array): the textbook loop of predict() on batches of 20, warmed up."""
    n = len(images)
    out = np.empty((n, *conv_base.output.shape[1:]), np.float32)

    def run() -> None:
        for start in range(0, n, NAIVE_BATCH):
            out[start : start + NAIVE_BATCH] = conv_base.predict(
                images[start : start + NAIVE_BATCH], verbose=0
            )

    conv_base.predict(images[:NAIVE_BATCH], verbose=0)  # warm-up: builds and traces predict
    return run, out


def pipeline_run(
    conv_base, images_path: Path, *, batch_size: int, workdir: Path
) -> tuple[Callable[[], None], Path]:
    """(run, its head-features file): the features stage's code path on a memory-mapped input,
    warmed up."""
    from tlpipe.backbone import boundary_layer, split_at
    from tlpipe.features import compile_forward, extract_features
    from tlpipe.storage import load_array

    bottom, top = split_at(conv_base, boundary_layer(conv_base, UNFREEZE_FROM))
    forward = compile_forward(bottom, top)  # compiled once, as the stage does for its three splits
    images = load_array(images_path)  # memory-mapped, as the stage reads data/prepared/*.npy
    boundary_path, head_path = workdir / "boundary.npy", workdir / "head.npy"
    # warm-up on two batches: traces the forward graph as the stage's first split would
    outputs = {"boundary_path": boundary_path, "head_path": head_path, "forward": forward}
    extract_features(
        bottom, top, images[: 2 * batch_size], batch_size=batch_size, label="warm-up", **outputs
    )

    def run() -> None:
        extract_features(bottom, top, images, batch_size=batch_size, label="bench", **outputs)

    return run, head_path


def matmul_run(dtype: str = "float32") -> Callable[[], object]:
    """A MATMUL_SIZE^2 matmul in `dtype` (2 * MATMUL_SIZE^3 flops), warmed up: the machine's
    ceiling for that dtype."""
    import tensorflow as tf

    a = tf.random.stateless_normal((MATMUL_SIZE, MATMUL_SIZE), seed=(1, 2), dtype=tf.float32)
    b = tf.random.stateless_normal((MATMUL_SIZE, MATMUL_SIZE), seed=(3, 4), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    for _ in range(2):
        tf.linalg.matmul(a, b)  # warm-up: thread pools, oneDNN primitive cache
    return lambda: tf.linalg.matmul(a, b)  # eager CPU ops return once computed


def matmul_seconds(dtype: str, rounds: int, within_rounds: float) -> float:
    """The shortest MATMUL_SIZE^2 matmul in `dtype`: the fastest of `rounds` more, and of the
    `within_rounds` seconds best_of measured it in while alternating it with other work. One takes
    well under a second, so these extra rounds are cheap and find the ceiling through the machine's
    slow spells, which a few rounds a minute apart can all hit (an efficiency above 1 is what a
    ceiling measured in a slow spell looks like)."""
    run = matmul_run(dtype)
    return min(within_rounds, best_of({dtype: run}, rounds)[dtype])


def rss_child(images_path: Path, batch_size: int, workdir: Path) -> None:
    """Child mode: run the features code path on a memory-mapped file, print own peak RSS as
    JSON."""
    from tlpipe.backbone import boundary_layer, split_at
    from tlpipe.features import extract_features
    from tlpipe.storage import load_array

    conv_base = seeded_vgg16()
    bottom, top = split_at(conv_base, boundary_layer(conv_base, UNFREEZE_FROM))
    images = load_array(images_path)
    before = psutil.Process().memory_info().rss
    rate = extract_features(
        bottom,
        top,
        images,
        batch_size=batch_size,
        boundary_path=workdir / "boundary.npy",
        head_path=workdir / "head.npy",
        label="rss",
    )
    print(
        json.dumps(
            {
                "n": len(images),
                "peak_rss_mb": peak_rss_mb(),
                "rss_before_mb": before / 2**20,
                "img_s": rate,
            }
        )
    )


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    VmHWM, not getrusage's ru_maxrss: after fork+exec, Linux keeps the parent's RSS at the time of
    the fork in the child's ru_maxrss, so a child of a 1.2 GB benchmark process would report at
    least 1.2 GB whatever it did. VmHWM is the high-water mark of the child's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_rss(n: int, batch_size: int, workdir: Path) -> dict[int, dict]:
    results = {}
    for count in (n, 10 * n):
        images_path = workdir / f"rss_{count}.npy"
        write_random_images(images_path, count, seed=count)
        outdir = workdir / f"rss_out_{count}"
        outdir.mkdir()
        done = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--rss-child",
                str(images_path),
                "--batch-size",
                str(batch_size),
                "--workdir",
                str(outdir),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=os.environ.copy(),
        )
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"RSS child on {count} images failed with exit code {done.returncode}")
        results[count] = json.loads(done.stdout.strip().splitlines()[-1])
        images_path.unlink()
        for file in outdir.iterdir():
            file.unlink()
    return results


def finetune_setup(x: np.ndarray):
    """The finetune stage's models on a seeded VGG16 for images like `x`, frozen up to block4_pool:
    (trainable part, full model, boundary activations of `x`, random one-hot labels)."""
    import keras

    from tlpipe.backbone import boundary_layer
    from tlpipe.training import build_finetune_models, build_head

    backbone = seeded_vgg16(x.shape[1:])
    train = project_params().train
    head = build_head(backbone.output.shape[1:], CLASSES, units=train.units, dropout=train.dropout)
    boundary = boundary_layer(backbone, UNFREEZE_FROM)
    trainable, full = build_finetune_models(backbone, head, boundary)
    y = keras.utils.to_categorical(
        np.random.default_rng(SEED).integers(0, CLASSES, len(x)), CLASSES
    )
    activations = keras.Model(backbone.input, backbone.get_layer(boundary).output).predict(
        x, batch_size=128, verbose=0
    )
    return trainable, full, activations, y


def measure_finetune(
    images: np.ndarray, *, n: int, reps: int, batch_size: int
) -> tuple[float, float]:
    """(seconds per epoch on cached boundary activations, seconds per epoch on images).

    Each is the shortest of `reps` epochs, timed by a callback (without fit()'s own set-up) after a
    two-step fit() that traces the train step; cached and full epochs alternate.
    """
    import keras

    from tlpipe.training import compile_classifier

    x = np.ascontiguousarray(images[:n])
    trainable, full, activations, y = finetune_setup(x)

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.times.append(time.perf_counter() - self.started)

    lr = project_params().lr
    runs = {"cached": (trainable, activations), "full": (full, x)}
    for model, inputs in runs.values():
        compile_classifier(model, lr)
        warm = 2 * batch_size  # a couple of steps: traces the train step outside the timing
        model.fit(inputs[:warm], y[:warm], batch_size=batch_size, epochs=1, verbose=0)
    timers = {name: EpochTimes() for name in runs}
    for _ in range(reps):  # alternate, so that a slow spell of the machine hits both alike
        for name, (model, inputs) in runs.items():
            model.fit(
                inputs,
                y,
                batch_size=batch_size,
                epochs=1,
                shuffle=True,
                verbose=0,
                callbacks=[timers[name]],
            )
    cached, full_pass = (min(timers[name].times) for name in runs)
    return cached, full_pass


# ------------------------------------------------------------------------- stages at real sizes
SCALE_SIZE = 150  # px: what the Keras transfer-learning guide uses
# images per stage at 1x (10x runs ten times as many): cheap stages get many, so that holding their
# data in memory would show; features, evaluate and predict run the full conv base per image.
STAGE_N = {
    "quick": dict(
        download=200,
        download_tfds=200,
        prepare=200,
        features=40,
        train=2000,
        finetune=120,
        evaluate=16,
        predict=16,
    ),
    "full": dict(
        download=400,
        download_tfds=400,
        prepare=400,
        features=80,
        train=4000,
        finetune=240,
        evaluate=32,
        predict=32,
    ),
}
# Batches small enough that 1x fills them: a stage's memory grows with its batch up to the batch
# size, and only growth in the number of images is under test here.
SCALE_BATCH = 8


def write_photos(folder: Path, *, n: int, size: int, seed: int) -> None:
    """`n` random-noise JPEGs of size x size in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        target = folder / ("a" if i % 2 else "b") / f"{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target, quality=90)


def write_params(root: Path, changes: dict[str, object]) -> Path:
    """`root`/params.yaml: the project's params with dotted-key `changes` applied."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def scale_project(root: Path, **changes: object) -> Path:
    """An empty project folder: params.yaml for 150 px, random weights, one epoch, `changes`."""
    scale = {
        "data.dataset": "digits",  # read by download only, which sets its own
        "backbone.weights": "none",
        "prepare.image_size": SCALE_SIZE,
        "train.epochs": 1,
        "finetune.epochs": 1,
        "features.batch_size": SCALE_BATCH,
        "evaluate.batch_size": SCALE_BATCH,
    }
    return write_params(root, scale | changes)


def place_tfds_archive(project: Path) -> None:
    """The empty CIFAR-10 archive tfds expects offline; its mock data never reads it."""
    manual = project / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"")


def stage_peak_rss(project: Path, module: str, *args: str, mock_tfds: int = 0) -> float:
    """Run `python -m <module> <args>` in `project` as a child; its peak RSS (VmHWM) in MB."""
    report = project / "peak_rss.json"
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--stage-child",
            module,
            "--report",
            str(report),
            "--mock-tfds",
            str(mock_tfds),
            "--",
            *args,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TFDS_DATA_DIR": str(project / "tfds")},
    )
    if done.returncode not in (0, 1) or not report.exists():  # predict exits 1 on a bad file only
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-3000:])
        raise SystemExit(f"{module} in {project} failed with exit code {done.returncode}")
    return json.loads(report.read_text())


def stage_child(module: str, *, report: Path, mock_tfds: int, args: list[str]) -> None:
    """Child mode: run a stage (or the tlpipe command) as `python -m` would; at exit, write this
    process's peak RSS to `report`."""
    import atexit
    import contextlib
    import runpy

    atexit.register(lambda: report.write_text(json.dumps(peak_rss_mb())))
    sys.argv = [module, *args]
    context = contextlib.nullcontext()
    if mock_tfds:
        import tensorflow_datasets as tfds

        context = tfds.testing.mock_data(num_examples=mock_tfds)
    with context:
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def synthetic_arrays(
    project: Path, *, counts: dict[str, int], shapes: dict[str, tuple], seed: int
) -> None:
    """data/prepared (uint8 images, one-hot labels, index), data/raw and the feature caches of
    the given shapes, random, for `counts` images per split, written in chunks."""
    from tlpipe import paths

    rng = np.random.default_rng(seed)

    def write(path: Path, *, n: int, shape: tuple, dtype: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, *shape))
        for start in range(0, n, 256):
            stop = min(start + 256, n)
            if dtype == "uint8":
                out[start:stop] = rng.integers(0, 256, (stop - start, *shape), dtype=np.uint8)
            else:
                out[start:stop] = rng.normal(0, 1, (stop - start, *shape)).astype(dtype)
        out.flush()
        del out

    classes = 2
    for split, n in counts.items():
        labels = np.arange(n) % classes
        prepared = paths.prepared_images(split, project / paths.PREPARED_DIR)
        if "image" in shapes:
            write(prepared, n=n, shape=shapes["image"], dtype="uint8")
        prepared_labels = paths.prepared_labels(split, project / paths.PREPARED_DIR)
        prepared_labels.parent.mkdir(parents=True, exist_ok=True)
        np.save(prepared_labels, np.eye(classes, dtype=np.float32)[labels])
        np.save(paths.prepared_index(split, project / paths.PREPARED_DIR), np.arange(n))
        for name, path in (("head", paths.head_features), ("boundary", paths.boundary_features)):
            if name in shapes:
                write(project / path(split), n=n, shape=shapes[name], dtype="float16")
    for folder in (paths.RAW_DIR, paths.PREPARED_DIR):
        (project / folder).mkdir(parents=True, exist_ok=True)
        (project / paths.classes_file(folder)).write_text(json.dumps(["a", "b"]))
    write(
        project / paths.raw_images("train"), n=max(counts.values()), shape=(8, 8, 3), dtype="uint8"
    )


def measure_stage_rss(mode: str, workdir: Path) -> dict[str, dict[str, float]]:
    """Peak RSS of every stage and of `tlpipe predict` on a folder, at N and 10N images, 150 px."""
    import shutil

    from tlpipe import paths

    results: dict[str, dict[str, float]] = {}
    for scale in (1, 10):
        n = {stage: count * scale for stage, count in STAGE_N[mode].items()}
        rss: dict[str, float] = {}
        base = workdir / f"scale{scale}"

        def split(count: int) -> dict[str, int]:
            return {"train": count - 2 * (count // 5), "val": count // 5, "test": count // 5}

        project = scale_project(
            base / "download", **{"data.dataset": "folder", "data.folder": "photos"}
        )
        write_photos(project / "photos", n=n["download"], size=SCALE_SIZE, seed=scale)
        rss["download"] = stage_peak_rss(project, "stages.download")
        project = scale_project(base / "prepare")
        shutil.copytree(base / "download" / paths.RAW_DIR, project / paths.RAW_DIR)
        rss["prepare"] = stage_peak_rss(project, "stages.prepare")

        project = scale_project(
            base / "tfds", **{"data.dataset": "cifar10:3.0.2", "data.image_size": SCALE_SIZE}
        )
        place_tfds_archive(project)
        rss["download_tfds"] = stage_peak_rss(
            project, "stages.download", mock_tfds=n["download_tfds"]
        )

        project = scale_project(base / "features")
        synthetic_arrays(
            project, counts=split(n["features"]), shapes={"image": (SCALE_SIZE,) * 2 + (3,)}, seed=1
        )
        rss["features"] = stage_peak_rss(project, "stages.features")
        head_shape = load_shape(project / paths.head_features("train"))
        boundary_shape = load_shape(project / paths.boundary_features("train"))

        project = scale_project(base / "train")
        synthetic_arrays(project, counts=split(n["train"]), shapes={"head": head_shape}, seed=2)
        rss["train"] = stage_peak_rss(project, "stages.train")

        project = scale_project(base / "finetune")
        synthetic_arrays(
            project, counts=split(n["finetune"]), shapes={"boundary": boundary_shape}, seed=3
        )
        for model in (paths.BACKBONE_FILE, paths.BOUNDARY_INFO_FILE):
            shutil.copy(base / "features" / model, project / model)
        (project / paths.HEAD_FILE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "train" / paths.HEAD_FILE, project / paths.HEAD_FILE)
        rss["finetune"] = stage_peak_rss(project, "stages.finetune")

        project = scale_project(base / "evaluate")
        synthetic_arrays(
            project,
            counts={"test": n["evaluate"]},
            shapes={"image": (SCALE_SIZE,) * 2 + (3,), "head": head_shape},
            seed=4,
        )
        shutil.copytree(base / "finetune" / "models", project / "models")
        rss["evaluate"] = stage_peak_rss(project, "stages.evaluate")

        project = base / "predict"
        project.mkdir()
        write_photos(project / "photos", n=n["predict"], size=SCALE_SIZE, seed=10 + scale)
        model = base / "finetune" / paths.MODEL_FILE
        rss["predict"] = stage_peak_rss(
            project,
            "tlpipe.cli",
            "predict",
            "--batch-size",
            str(SCALE_BATCH),
            "--model",
            str(model),
            "photos",
        )
        results[f"{scale}x"] = rss
    return results


def load_shape(path: Path) -> tuple[int, ...]:
    return tuple(np.load(path, mmap_mode="r").shape[1:])


def bytes_per_image_224(workdir: Path, dtype: str) -> dict[str, float]:
    """What prepare and features write per 224 px image (raw input aside): prepared pixels and
    the two caches, as the features stage stores them with `dtype`."""
    from tlpipe import paths

    project = scale_project(
        workdir / f"bytes-{dtype}", **{"prepare.image_size": 224, "features.dtype": dtype}
    )
    n = 4
    synthetic_arrays(
        project, counts={"train": n, "val": n, "test": n}, shapes={"image": (224, 224, 3)}, seed=5
    )
    stage_peak_rss(project, "stages.features")
    written = {
        "prepared": sum((project / paths.prepared_images(s)).stat().st_size for s in paths.SPLITS),
        "boundary": sum(
            (project / paths.boundary_features(s)).stat().st_size for s in paths.SPLITS
        ),
        "head": sum((project / paths.head_features(s)).stat().st_size for s in paths.SPLITS),
    }
    return {part: size / (3 * n) for part, size in written.items()}


def finetune_speedup_at(size: int, *, n: int, reps: int, batch_size: int) -> tuple[float, float]:
    """measure_finetune on `n` random images of size x size (block5 unfrozen)."""
    rng = np.random.default_rng(size)
    images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    return measure_finetune(images, n=n, reps=reps, batch_size=batch_size)


def stream_vs_memory(workdir: Path, *, reps: int) -> dict[str, float]:
    """Seconds per epoch of the demo's fine-tuning (block4 unfrozen on 1,257 cached 4x4x256
    activations at 32 px, batch 64), fed three ways: NumPy arrays in memory, streamed from a
    float32 .npy by `tlpipe.streaming.batches`, streamed from a float16 .npy; epochs alternate."""
    import keras

    from tlpipe.backbone import boundary_layer
    from tlpipe.storage import open_rows
    from tlpipe.streaming import batches
    from tlpipe.training import build_finetune_models, build_head, compile_classifier

    n, batch_size = 1257, project_params().finetune.batch_size
    backbone = seeded_vgg16()
    head = build_head(backbone.output.shape[1:], CLASSES, units=256, dropout=0.5)
    trainable, _ = build_finetune_models(backbone, head, boundary_layer(backbone, "block4_conv1"))
    rng = np.random.default_rng(SEED)
    x = rng.normal(0, 1, (n, *trainable.input.shape[1:])).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, CLASSES, n), CLASSES).astype(np.float32)
    np.save(workdir / "stream_y.npy", y)
    streamed = {}
    for dtype in ("float32", "float16"):
        np.save(workdir / f"stream_x_{dtype}.npy", x.astype(dtype))
        streamed[dtype] = batches(
            open_rows(workdir / f"stream_x_{dtype}.npy"),
            open_rows(workdir / "stream_y.npy"),
            batch_size=batch_size,
            seed=SEED,
        )
    compile_classifier(trainable, 1e-4)
    trainable.fit(x[: 2 * batch_size], y[: 2 * batch_size], batch_size=batch_size, verbose=0)
    feeds = {
        "memory": lambda: trainable.fit(
            x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0
        ),
        **{
            f"stream_{dtype}": lambda dataset=dataset: trainable.fit(
                dataset, epochs=1, shuffle=False, verbose=0
            )
            for dtype, dataset in streamed.items()
        },
    }
    return best_of(feeds, reps)


def pipeline_at_scale(workdir: Path, images: int, size: int) -> dict[str, object]:
    """The whole pipeline, default params but `backbone.weights: none`, on `images` generated
    CIFAR-10-shaped images read through tensorflow-datasets (its mock data: the real download
    path, random pixels), resized to `size`; a sixth held out for testing, as CIFAR-10's 10,000 of
    60,000. Each stage's wall time and peak RSS, the bytes written, then `dvc commit` and the
    time of a no-op `dvc repro`."""
    import shutil

    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in listed:
        if not name.startswith(("benchmarks/", "docs/", "metrics/", "tests/")):
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, workdir / name)
    changes = {
        "data.dataset": "cifar10:3.0.2",
        "backbone.weights": "none",
        "prepare.image_size": size,
        "prepare.test_fraction": 1 / 6,
    }
    if size != 32:  # CIFAR-10's own size
        changes["data.image_size"] = size
    project = write_params(workdir, changes)
    place_tfds_archive(project)
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "b"],
    ):
        subprocess.run(command, cwd=project, check=True, capture_output=True)
    stages: dict[str, dict[str, float]] = {}
    for stage in ("download", "prepare", "features", "train", "finetune", "evaluate"):
        started = time.perf_counter()
        peak = stage_peak_rss(
            project, f"stages.{stage}", mock_tfds=images if stage == "download" else 0
        )
        stages[stage] = {
            "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(peak),
        }
        print(f"{stage}: {stages[stage]}", file=sys.stderr, flush=True)
    disk = {
        folder: sum(f.stat().st_size for f in (project / folder).rglob("*") if f.is_file())
        for folder in ("data/raw", "data/prepared", "data/features", "models")
    }
    dvc = [str(Path(sys.executable).parent / "dvc")]
    started = time.perf_counter()
    subprocess.run([*dvc, "commit", "-f", "-q"], cwd=project, check=True, capture_output=True)
    commit_s = time.perf_counter() - started
    started = time.perf_counter()
    repro = subprocess.run([*dvc, "repro"], cwd=project, check=True, capture_output=True, text=True)
    noop_s = time.perf_counter() - started
    return {
        "images": images,
        "size": size,
        "stages": stages,
        "bytes": disk,
        "metrics": json.loads((project / "metrics/evaluate.json").read_text()),
        "dvc_commit_s": round(commit_s, 1),
        "noop_repro_s": round(noop_s, 1),
        "noop_repro_output": repro.stdout.strip().splitlines()[-1],
    }


def features_stage_s(project: Path, env: dict[str, str]) -> float:
    """Wall time of `python -m stages.features` in `project`, as DVC would run it."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "stages.features"],
        cwd=project,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def features_bytes(project: Path) -> dict[str, bytes]:
    folder = project / "data" / "features"
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in [*sorted(folder.rglob("*.npy")), folder / "backbone.keras"]
    }


def ray_vs_local(workdir: Path, n_images: int) -> dict[str, float]:
    """The features stage with `cluster.engine: ray` on two loopback Ray nodes of one CPU each,
    against `engine: local` in one process, on the same cores: whole-stage wall times (start-up,
    Ray connection and actor start included), throughput ratio ray / local. Both must write the
    same bytes."""
    from tests.ray_loopback import loopback_cluster
    from tlpipe.paths import SPLITS, prepared_images
    from tlpipe.storage import save_array

    project = workdir / "ray-vs-local"
    settings = {"backbone.weights": "none", "prepare.image_size": IMAGE_SHAPE[0]}
    write_params(project, settings | {"cluster.engine": "local"})
    rng = np.random.default_rng(SEED)
    counts = dict(zip(SPLITS, (n_images * 8 // 10, n_images // 10, n_images // 10), strict=True))
    for split, count in counts.items():
        pixels = rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)
        save_array(project / prepared_images(split), pixels)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    local_s = features_stage_s(project, env)
    local_bytes = features_bytes(project)
    with loopback_cluster(cpus_per_node=1) as address:
        write_params(project, settings | {"cluster.engine": "ray", "cluster.address": address})
        ray_s = features_stage_s(project, env)
    if features_bytes(project) != local_bytes:
        raise SystemExit("features with cluster.engine: ray wrote other bytes than local")
    return {
        "ray_vs_local": round(local_s / ray_s, 3),
        "ray_n_images": sum(counts.values()),
        "features_local_stage_s": round(local_s, 1),
        "features_ray_stage_s": round(ray_s, 1),
    }


# --------------------------------------------------------------------------------------------- main
BF16_SIZE = 64  # px: block5 on 4x4 maps, where padding taps no longer dominate
FINETUNE_BF16_SIZES = (BF16_SIZE, SCALE_SIZE)  # block5 on 4x4 and on 9x9 maps


def filter_gradient_kernels(reps: int, batch_size: int) -> dict[str, float]:
    """Seconds for one filter gradient of VGG16's block5 convolutions at 150 px (9x9x512 in and
    out, 3x3 kernel) for a batch: TensorFlow's own kernel in float32 and in bfloat16, and
    `tlpipe.precision.filter_gradient_by_taps` in bfloat16, which bfloat16 training uses; the
    three alternate."""
    import tensorflow as tf

    from tlpipe.precision import filter_gradient_by_taps

    shape = (batch_size, 9, 9, 512)
    inputs = tf.random.stateless_normal(shape, seed=(5, 6))
    output_gradient = tf.random.stateless_normal(shape, seed=(7, 8))

    def tensorflow_kernel(dtype: str) -> Callable[[], object]:
        x, dy = tf.cast(inputs, dtype), tf.cast(output_gradient, dtype)
        run = tf.function(
            lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=x,
                filter_sizes=(3, 3, 512, 512),
                out_backprop=dy,
                strides=(1, 1, 1, 1),
                padding="SAME",
            )
        )
        run()  # traces, and warms oneDNN's primitive cache
        return lambda: run().numpy()

    x, dy = tf.cast(inputs, "bfloat16"), tf.cast(output_gradient, "bfloat16")
    taps = tf.function(lambda: filter_gradient_by_taps(x, dy, (3, 3), "same"))
    taps()
    return best_of(
        {
            "tensorflow_float32": tensorflow_kernel("float32"),
            "tensorflow_bfloat16": tensorflow_kernel("bfloat16"),
            "taps_bfloat16": lambda: taps().numpy(),
        },
        reps,
    )


def bfloat16_vs_float32(
    workdir: Path, *, n: int, finetune_n: int, reps: int, batch_size: int, finetune_batch: int
) -> dict[str, float]:
    """Seconds for the same work in float32 and in bfloat16 (`tlpipe.precision.computing_in`), at
    BF16_SIZE px, the two alternating within each round: the features stage's path over `n`
    images; one cached fine-tuning epoch (block5 and the head on `finetune_n` boundary
    activations); and the MATMUL_SIZE^2 matmul in each dtype, each precision's ceiling."""
    from contextlib import ExitStack

    import keras

    from tlpipe.backbone import boundary_layer, split_at
    from tlpipe.features import compile_forward, extract_features
    from tlpipe.precision import computing_in
    from tlpipe.storage import load_array
    from tlpipe.training import build_finetune_models, build_head, compile_classifier

    shape = (BF16_SIZE, BF16_SIZE, 3)
    rng = np.random.default_rng(SEED)
    np.save(workdir / "bf16_x.npy", rng.uniform(-124.0, 152.0, (n, *shape)).astype(np.float32))
    images = load_array(workdir / "bf16_x.npy")
    conv_base = seeded_vgg16(shape)
    bottom, top = split_at(conv_base, boundary_layer(conv_base, UNFREEZE_FROM))
    outputs = {"boundary_path": workdir / "bf16_b.npy", "head_path": workdir / "bf16_h.npy"}

    def features_in(precision: str) -> Callable[[], object]:
        with computing_in(conv_base, precision):
            forward = compile_forward(bottom, top)
            extract_features(  # warm-up: traces the graph in this precision
                bottom,
                top,
                images[:batch_size],
                batch_size=batch_size,
                label="warm-up",
                forward=forward,
                **outputs,
            )

        def run() -> None:
            with computing_in(conv_base, precision):
                extract_features(
                    bottom,
                    top,
                    images,
                    batch_size=batch_size,
                    label=precision,
                    forward=forward,
                    **outputs,
                )

        return run

    epochs = {}
    with ExitStack() as stack:
        for size in FINETUNE_BF16_SIZES:
            backbone_at = seeded_vgg16((size, size, 3))
            boundary = boundary_layer(backbone_at, UNFREEZE_FROM)
            count = finetune_n if size == BF16_SIZE else finetune_n // 2
            cut_shape = backbone_at.get_layer(boundary).output.shape[1:]
            activations = np.abs(rng.normal(0, 1, (count, *cut_shape))).astype(np.float32)
            labels = keras.utils.to_categorical(rng.integers(0, CLASSES, count), CLASSES)
            for precision in ("float32", "bfloat16"):
                head = build_head(backbone_at.output.shape[1:], CLASSES, units=256, dropout=0.5)
                trainable, _ = build_finetune_models(seeded_vgg16((size, size, 3)), head, boundary)
                stack.enter_context(computing_in(trainable, precision))
                compile_classifier(trainable, 1e-4)
                warm = 2 * finetune_batch
                trainable.fit(
                    activations[:warm], labels[:warm], batch_size=finetune_batch, verbose=0
                )
                epochs[f"finetune_{size}_{precision}"] = (
                    lambda model=trainable, x=activations, y=labels: model.fit(
                        x, y, batch_size=finetune_batch, epochs=1, shuffle=True, verbose=0
                    )
                )
        best = best_of(
            {
                "features_float32": features_in("float32"),
                "features_bfloat16": features_in("bfloat16"),
                **epochs,
                "matmul_float32": matmul_run("float32"),
                "matmul_bfloat16": matmul_run("bfloat16"),
            },
            reps,
        )
    macs = conv_macs_per_image(conv_base, real_pixels_only=True)
    result = {}
    for precision in ("float32", "bfloat16"):
        img_s = n / best[f"features_{precision}"]
        matmul_s = matmul_seconds(precision, CEILING_ROUNDS, best[f"matmul_{precision}"])
        ceiling = 2 * MATMUL_SIZE**3 / matmul_s / 1e9
        result[precision] = {
            "features_img_s": img_s,
            **{
                f"finetune_epoch_s_{size}": best[f"finetune_{size}_{precision}"]
                for size in FINETUNE_BF16_SIZES
            },
            "ceiling_gflops": ceiling,
            "efficiency": 2 * macs * img_s / 1e9 / ceiling,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes; finishes in under 3 minutes"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="features batch size (default: params.yaml)"
    )
    parser.add_argument(
        "--finetune-batch-size",
        type=int,
        default=None,
        help="fine-tuning batch size (default: params.yaml)",
    )
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage-child", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mock-tfds", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--at-scale",
        nargs=2,
        type=int,
        metavar=("IMAGES", "SIZE"),
        help="instead: the whole pipeline on IMAGES generated images at SIZE px (see RESULTS.md)",
    )
    parser.add_argument(
        "--ray-vs-local",
        action="store_true",
        help="instead: only the features stage on two loopback Ray nodes against one process",
    )
    parser.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_vs_local:
        with tempfile.TemporaryDirectory(prefix="tlpipe-ray-") as tmp:
            n = MODES["quick" if args.quick else "full"]["ray_n"]
            print(json.dumps(ray_vs_local(Path(tmp), n)))
        return
    if args.at_scale:
        with tempfile.TemporaryDirectory(prefix="tlpipe-scale-") as tmp:
            print(json.dumps(pipeline_at_scale(Path(tmp), *args.at_scale)))
        return
    if args.stage_child:
        stage_child(
            args.stage_child, report=args.report, mock_tfds=args.mock_tfds, args=args.child_args
        )
        return
    batch_size = args.batch_size or project_params().features.batch_size
    if args.rss_child:
        rss_child(args.rss_child, batch_size, args.workdir)
        return

    mode = "quick" if args.quick else "full"
    sizes = MODES[mode]
    wall_started = time.perf_counter()
    load = OtherLoad()
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="tlpipe-bench-") as tmp:
        workdir = Path(tmp)
        images_path = workdir / "images.npy"
        write_random_images(images_path, sizes["n_images"], seed=SEED)
        images = np.load(images_path)  # in memory, for the naive loop (the textbook way)

        conv_base = seeded_vgg16()
        macs = conv_macs_per_image(conv_base, real_pixels_only=True)
        all_taps = conv_macs_per_image(conv_base)
        gflop_per_image = 2 * macs / 1e9

        naive, naive_out = naive_loop(conv_base, images)
        pipeline, head_path = pipeline_run(
            conv_base, images_path, batch_size=batch_size, workdir=workdir
        )
        best = best_of(
            {"naive": naive, "pipeline": pipeline, "ceiling": matmul_run()}, sizes["reps"]
        )
        naive_img_s, pipeline_img_s = len(images) / best["naive"], len(images) / best["pipeline"]
        matmul_s = matmul_seconds("float32", CEILING_ROUNDS, best["ceiling"])
        ceiling_gflops = 2 * MATMUL_SIZE**3 / matmul_s / 1e9
        max_abs_diff = float(np.max(np.abs(np.load(head_path) - naive_out)))
        scale = float(np.max(np.abs(naive_out))) or 1.0
        if max_abs_diff > 1e-4 * scale:
            raise SystemExit(
                f"pipeline output differs from the plain forward pass by {max_abs_diff:g}"
            )
        pipeline_gflops = gflop_per_image * pipeline_img_s
        rss = measure_rss(sizes["rss_n"], batch_size, workdir)
        finetune_batch = args.finetune_batch_size or project_params().finetune.batch_size
        cached_s, full_s = measure_finetune(
            images, n=sizes["finetune_n"], reps=sizes["finetune_reps"], batch_size=finetune_batch
        )
        finetune_at = {
            size: finetune_speedup_at(
                size, n=sizes[f"finetune_n_{size}"], reps=2, batch_size=finetune_batch
            )
            for size in (64, 150)
        }
        epochs_s = stream_vs_memory(workdir, reps=5)  # epochs of ~3 s: best of 5 is stable
        memory_epoch_s, stream_epoch_s = epochs_s["memory"], epochs_s["stream_float32"]
        precisions = bfloat16_vs_float32(
            workdir,
            n=sizes["bf16_n"],
            finetune_n=sizes["bf16_finetune_n"],
            reps=sizes["reps"],
            batch_size=batch_size,
            finetune_batch=finetune_batch,
        )
        filter_gradient_s = filter_gradient_kernels(reps=10, batch_size=finetune_batch)
        stage_rss = measure_stage_rss(mode, workdir)
        written_224 = {
            dtype: bytes_per_image_224(workdir, dtype) for dtype in ("float32", "float16")
        }
        on_ray = ray_vs_local(workdir, sizes["ray_n"])

    rss_1x, rss_10x = (rss[k]["peak_rss_mb"] for k in sorted(rss))
    bf16_finetune_speedups = {
        size: precisions["float32"][f"finetune_epoch_s_{size}"]
        / precisions["bfloat16"][f"finetune_epoch_s_{size}"]
        for size in FINETUNE_BF16_SIZES
    }
    result = {
        "naive_img_s": round(naive_img_s, 1),
        "pipeline_img_s": round(pipeline_img_s, 1),
        "ceiling_gflops": round(ceiling_gflops, 1),
        "efficiency": round(pipeline_gflops / ceiling_gflops, 3),
        "rss_1x_mb": round(rss_1x, 1),
        "rss_10x_mb": round(rss_10x, 1),
        "finetune_epoch_speedup": round(full_s / cached_s, 2),
        "finetune_speedup_64": round(finetune_at[64][1] / finetune_at[64][0], 2),
        "finetune_speedup_150": round(finetune_at[150][1] / finetune_at[150][0], 2),
        "stream_vs_memory_epoch": round(memory_epoch_s / stream_epoch_s, 3),
        "rss_ratio_by_stage": {
            stage: round(stage_rss["10x"][stage] / stage_rss["1x"][stage], 3)
            for stage in stage_rss["1x"]
        },
        "bf16_features_speedup": round(
            precisions["bfloat16"]["features_img_s"] / precisions["float32"]["features_img_s"], 2
        ),
        "bf16_finetune_speedup": round(bf16_finetune_speedups[SCALE_SIZE], 2),
        "bf16_finetune_speedup_64": round(bf16_finetune_speedups[BF16_SIZE], 2),
        "filter_gradient_ms": {
            kernel: round(1000 * seconds, 1) for kernel, seconds in filter_gradient_s.items()
        },
        "efficiency_64_by_precision": {
            precision: round(values["efficiency"], 3) for precision, values in precisions.items()
        },
        "bytes_per_image_224": round(sum(written_224[project_params().features.dtype].values())),
        "ray_vs_local": on_ray["ray_vs_local"],
        # extras
        **{key: value for key, value in on_ray.items() if key != "ray_vs_local"},
        "mode": mode,
        "n_images": sizes["n_images"],
        "batch_size": batch_size,
        "speedup_vs_naive": round(pipeline_img_s / naive_img_s, 2),
        "gflop_per_image": round(gflop_per_image, 4),
        "efficiency_all_taps": round(2 * all_taps / 1e9 * pipeline_img_s / ceiling_gflops, 3),
        "precisions_64": {
            precision: {key: round(value, 3) for key, value in values.items()}
            for precision, values in precisions.items()
        },
        "pipeline_gflops": round(pipeline_gflops, 1),
        "rss_n": sizes["rss_n"],
        "rss_ratio": round(rss_10x / rss_1x, 3),
        "finetune_n": sizes["finetune_n"],
        "finetune_batch_size": finetune_batch,
        "finetune_cached_epoch_s": round(cached_s, 3),
        "finetune_full_epoch_s": round(full_s, 3),
        "finetune_epochs_s_64": [round(t, 3) for t in finetune_at[64]],
        "finetune_epochs_s_150": [round(t, 3) for t in finetune_at[150]],
        "memory_epoch_s": round(memory_epoch_s, 3),
        "stream_epoch_s": round(stream_epoch_s, 3),
        "stream_float16_epoch_s": round(epochs_s["stream_float16"], 3),
        "stage_peak_rss_mb": {
            scale: {stage: round(mb, 1) for stage, mb in by_stage.items()}
            for scale, by_stage in stage_rss.items()
        },
        "stage_n": STAGE_N[mode],
        "bytes_per_image_224_by_dtype": {
            dtype: {part: round(size) for part, size in parts.items()}
            for dtype, parts in written_224.items()
        },
        "max_abs_diff": max_abs_diff,
        "other_cpu_load": round(load.cpus(), 2),
        "tf_version": tf.__version__,
        "wall_s": round(time.perf_counter() - wall_started, 1),
    }

    rows = [
        ("naive loop, predict() x batch 20", f"{naive_img_s:8.1f} img/s", ""),
        (
            f"features stage path, batch {batch_size}",
            f"{pipeline_img_s:8.1f} img/s",
            f"{result['speedup_vs_naive']:.2f}x naive (target >= 2.5)",
        ),
        (
            "conv base work per image",
            f"{gflop_per_image:8.3f} GFLOP",
            f"{macs:,} MACs on real pixels ({all_taps:,} counting padding taps)",
        ),
        ("pipeline compute rate", f"{pipeline_gflops:8.1f} GFLOP/s", ""),
        (
            f"ceiling: fp32 matmul {MATMUL_SIZE}^2",
            f"{ceiling_gflops:8.1f} GFLOP/s",
            f"efficiency {result['efficiency']:.3f} on real pixels, "
            f"{result['efficiency_all_taps']:.3f} counting padding taps",
        ),
        (
            f"peak RSS, {sizes['rss_n']} images",
            f"{rss_1x:8.1f} MB",
            f"{rss[sizes['rss_n']]['rss_before_mb']:.0f} MB before extracting",
        ),
        (
            f"peak RSS, {10 * sizes['rss_n']} images",
            f"{rss_10x:8.1f} MB",
            f"ratio {result['rss_ratio']:.3f} (target <= 1.3); "
            f"{rss[10 * sizes['rss_n']]['rss_before_mb']:.0f} MB before extracting",
        ),
        (
            "finetune epoch, cached activations",
            f"{cached_s:8.2f} s",
            f"{sizes['finetune_n']} images, batch {finetune_batch}",
        ),
        (
            "finetune epoch, full forward pass",
            f"{full_s:8.2f} s",
            f"speedup {result['finetune_epoch_speedup']:.2f}x at 32 px (bound ~2.6x there)",
        ),
        *(
            (
                f"finetune epoch at {size} px, cached / full",
                f"{finetune_at[size][0]:5.2f}/{finetune_at[size][1]:.2f} s",
                f"speedup {finetune_at[size][1] / finetune_at[size][0]:.2f}x"
                + (" (target >= 3.5)" if size == 150 else ""),
            )
            for size in (64, 150)
        ),
        (
            "demo fine-tuning epoch, memory / streamed",
            f"{memory_epoch_s:5.2f}/{stream_epoch_s:.2f} s",
            f"streamed at {result['stream_vs_memory_epoch']:.3f}x in-memory speed (target >= 0.9)",
        ),
        (
            "demo fine-tuning epoch, float16 cache",
            f"{epochs_s['stream_float16']:8.2f} s",
            f"{stream_epoch_s / epochs_s['stream_float16']:.3f}x the float32 cache's speed",
        ),
        *(
            (
                f"{precision} at {BF16_SIZE} px: features",
                f"{values['features_img_s']:8.1f} img/s",
                f"efficiency {values['efficiency']:.3f} of the {precision} matmul's "
                f"{values['ceiling_gflops']:.0f} GFLOP/s",
            )
            for precision, values in precisions.items()
        ),
        (
            f"bfloat16 / float32 features at {BF16_SIZE} px",
            f"{result['bf16_features_speedup']:8.2f}x",
            "throughput ratio (target >= 1.7)",
        ),
        *(
            (
                f"cached finetune epoch at {size} px, f32 / bf16",
                f"{precisions['float32'][f'finetune_epoch_s_{size}']:5.2f}/"
                f"{precisions['bfloat16'][f'finetune_epoch_s_{size}']:.2f} s",
                f"speedup {bf16_finetune_speedups[size]:.2f}x"
                + (" (target >= 1.5)" if size == SCALE_SIZE else ""),
            )
            for size in FINETUNE_BF16_SIZES
        ),
        (
            "block5 filter gradient at 150 px, f32 / bf16",
            f"{1000 * filter_gradient_s['tensorflow_float32']:4.0f}/"
            f"{1000 * filter_gradient_s['tensorflow_bfloat16']:.0f} ms",
            f"TensorFlow's kernel, batch {finetune_batch}; bf16 by taps (used in training) "
            f"{1000 * filter_gradient_s['taps_bfloat16']:.0f} ms",
        ),
        *(
            (
                f"peak RSS {stage}, 1x / 10x",
                f"{stage_rss['1x'][stage]:5.0f}/{stage_rss['10x'][stage]:.0f} MB",
                f"ratio {ratio:.3f} (target <= 1.3), {STAGE_N[mode][stage]} images at 1x",
            )
            for stage, ratio in result["rss_ratio_by_stage"].items()
        ),
        *(
            (
                f"written per 224 px image, {dtype} caches",
                f"{sum(parts.values()) / 1e3:8.1f} KB",
                ", ".join(f"{part} {size / 1e3:.0f} KB" for part, size in parts.items())
                + " (target <= 0.4 x 1.1 MB = 440 KB)",
            )
            for dtype, parts in written_224.items()
        ),
        (
            "features stage, 2 loopback Ray nodes / local",
            f"{on_ray['features_ray_stage_s']:5.1f}/{on_ray['features_local_stage_s']:.1f} s",
            f"throughput {on_ray['ray_vs_local']:.3f}x local, {on_ray['ray_n_images']} images "
            "(same 2 cores: overhead, not speed-up)",
        ),
        (
            "other processes' CPU load",
            f"{result['other_cpu_load']:8.2f} CPUs",
            "0 = machine to ourselves",
        ),
    ]
    print(
        f"features benchmark ({mode}): {sizes['n_images']} images 32x32x3, VGG16 random weights, "
        f"TF {tf.__version__}, {os.cpu_count()} CPUs, best of {sizes['reps']} after warm-up"
    )
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>16}  {note}")
    print(f"  wall time {result['wall_s']:.0f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
