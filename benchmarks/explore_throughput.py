"""What makes the VGG16 conv base run fastest at 32x32 on this machine (the study behind RESULTS.md).

    python benchmarks/explore_throughput.py [--no-in-process] [--no-per-process]
    python benchmarks/explore_throughput.py --batch-sizes   # extract_features at 64..512: img/s, peak RSS

Environment: EXPLORE_N images per timing (1536), EXPLORE_ROUNDS (3), EXPLORE_MAX_WAIT seconds to
wait for idle CPUs before each timing (60).

In-process variants run on the same model and images, interleaved round by round; each is reported
as the best and median img/s over the rounds and, because other work on a shared machine only
slows a timing down, also over the "quiet" timings alone (other processes used < 0.05 CPUs),
as a ratio to the reference (tf.function forward, batch 128). Settings that must be fixed before
TensorFlow starts (threads, oneDNN, op determinism) run in child processes, each right after a
default child, and are compared with it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

from benchmarks.run import OtherLoad  # noqa: E402

N = int(os.environ.get("EXPLORE_N", "1536"))
ROUNDS = int(os.environ.get("EXPLORE_ROUNDS", "3"))


def forward_rates(batch_sizes: list[int], rounds: int) -> dict[int, list[tuple[float, float]]]:
    """Child mode: (img/s, other processes' CPUs) per timing of the stage's forward graph."""
    import keras
    import tensorflow as tf

    from stages.backbone import split_at
    from stages.features import compile_forward

    if os.environ.get("EXPLORE_DETERMINISM", "1") == "1":
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(42)
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    forward = compile_forward(*split_at(base, "block4_pool"))
    x = np.random.default_rng(0).uniform(-124, 152, (N, 32, 32, 3)).astype(np.float32)
    rates: dict[int, list[tuple[float, float]]] = {b: [] for b in batch_sizes}
    for b in batch_sizes:
        forward(x[:b])
    for _ in range(rounds):
        for b in batch_sizes:
            wait_quiet()
            load = OtherLoad()
            started = time.perf_counter()
            for s in range(0, N, b):
                [t.numpy() for t in forward(x[s : s + b])]
            rates[b].append((N / (time.perf_counter() - started), load.cpus()))
    return rates


def child() -> None:
    intra, inter = int(os.environ.get("EXPLORE_INTRA", 0)), int(os.environ.get("EXPLORE_INTER", 0))
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    print(json.dumps(forward_rates([64, 128], ROUNDS)))


EARLIER_VERSIONS = {
    "e66437b": "before issue 3",
    "b919479": "reader/writer threads, trace cache, page release",
}
QUIET = 0.05  # a timing counts as quiet if other processes used less than this many CPUs meanwhile


def wait_quiet(max_wait: float = float(os.environ.get("EXPLORE_MAX_WAIT", "60"))) -> None:
    """Wait (up to max_wait s) until other processes leave the CPUs idle for half a second."""
    import psutil

    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline and psutil.cpu_percent(interval=0.5) > 3:
        pass


def summarise(rates: list[float]) -> tuple[float, float]:
    return max(rates), float(np.median(rates))


def in_process() -> None:
    import keras
    import tensorflow as tf

    from stages.backbone import split_at
    from stages.features import compile_forward, extract_features

    # earlier versions of extract_features from git history, for comparison with the working tree
    earlier = {}
    for commit, what in EARLIER_VERSIONS.items():
        source = subprocess.run(["git", "show", f"{commit}:stages/features.py"], cwd=ROOT, capture_output=True, text=True)
        if source.returncode == 0:
            path = Path(tempfile.mkdtemp(prefix="tlpipe-features-")) / f"features_{commit}.py"
            path.write_text(source.stdout)
            spec = importlib.util.spec_from_file_location(f"features_{commit}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            earlier[f"extract_features @{commit} ({what})"] = module.extract_features

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(42)
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    bottom, top = split_at(base, "block4_pool")
    forward = compile_forward(bottom, top)
    x = np.random.default_rng(0).uniform(-124, 152, (N, 32, 32, 3)).astype(np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="tlpipe-explore-"))
    np.save(tmp / "x.npy", x)
    xm = np.load(tmp / "x.npy", mmap_mode="r")

    def loop(fn, b):
        def run():
            for s in range(0, N, b):
                out = fn(x[s : s + b])
                [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
        return run

    xla = tf.function(lambda t: base(t, training=False), jit_compile=True,
                      input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])
    whole = tf.function(lambda t: base(t, training=False), input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])

    # channels-first copy of the same network (same weights; NCHW input)
    keras.config.set_image_data_format("channels_first")
    base_cf = keras.applications.VGG16(weights=None, include_top=False, input_shape=(3, 32, 32))
    keras.config.set_image_data_format("channels_last")
    base_cf.set_weights(base.get_weights())
    cf = tf.function(lambda t: tf.transpose(base_cf(tf.transpose(t, (0, 3, 1, 2)), training=False), (0, 2, 3, 1)),
                     input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])

    def tfdata(b):
        def run():
            def read(i):
                return np.asarray(xm[i * b : (i + 1) * b])
            ds = tf.data.Dataset.range((N + b - 1) // b).map(
                lambda i: tf.numpy_function(read, [i], tf.float32)).prefetch(1)
            for batch in ds:
                [t.numpy() for t in forward(batch)]
        return run

    def extract(function, b):
        if function is extract_features:
            return lambda: function(bottom, top, xm, b, tmp / "b.npy", tmp / "h.npy", "x", forward)
        return lambda: function(bottom, top, xm, b, tmp / "b.npy", tmp / "h.npy", "x")

    variants = {f"forward bs{b}": loop(forward, b) for b in (32, 64, 128, 256, 512)}
    variants["whole model (one Functional) bs128"] = loop(whole, 128)
    variants["model.predict bs128"] = lambda: base.predict(x, batch_size=128, verbose=0)
    variants["channels_first bs128"] = loop(cf, 128)
    variants["tf.data prefetch from memmap bs128"] = tfdata(128)
    for b in (64, 128, 256, 512):
        variants[f"extract_features (working tree) bs{b}"] = extract(extract_features, b)
    for name, function in earlier.items():
        variants[f"{name} bs128"] = extract(function, 128)

    # correctness of the channels-first copy and XLA (XLA is timed on a few batches only: it is slow)
    ref = base(x[:64], training=False).numpy()
    print(f"channels_first max |diff| {np.abs(cf(x[:64]).numpy() - ref).max():.3g}, "
          f"XLA max |diff| {np.abs(xla(x[:64]).numpy() - ref).max():.3g} (scale {np.abs(ref).max():.3g})")
    started = time.perf_counter()
    for s in range(0, 512, 128):
        xla(x[s : s + 128]).numpy()
    print(f"XLA jit_compile=True bs128: {512 / (time.perf_counter() - started):.0f} img/s (after compile)")

    for run in variants.values():
        run()  # warm-up / tracing
    rates: dict[str, list[float]] = {k: [] for k in variants}
    quiet: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(ROUNDS):
        for name, run in variants.items():
            wait_quiet()
            load = OtherLoad()
            started = time.perf_counter()
            run()
            rate = N / (time.perf_counter() - started)
            rates[name].append(rate)
            if load.cpus() < QUIET:
                quiet[name].append(rate)
    ref_best, ref_median = summarise(rates["forward bs128"])
    q_ref = summarise(quiet["forward bs128"])[1] if quiet["forward bs128"] else float("nan")
    print(f"{'variant':<60} {'best':>7} {'median':>7} {'best/ref':>9} {'med/ref':>8} {'quiet med':>10} {'q/ref':>6} {'n quiet':>8}")
    for name, values in rates.items():
        best, median = summarise(values)
        q = summarise(quiet[name])[1] if quiet[name] else float("nan")
        print(f"{name:<60} {best:7.0f} {median:7.0f} {best / ref_best:9.2f} {median / ref_median:8.2f} "
              f"{q:10.0f} {q / q_ref:6.2f} {len(quiet[name]):8d}")


def batch_sizes() -> None:
    """extract_features head to head at batch 64/128/256/512 (interleaved), and each one's peak RSS."""
    import keras
    import tensorflow as tf

    from benchmarks.run import write_random_images
    from stages.backbone import split_at
    from stages.features import compile_forward, extract_features

    sizes = [64, 128, 256, 512]
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(42)
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    bottom, top = split_at(base, "block4_pool")
    forward = compile_forward(bottom, top)
    tmp = Path(tempfile.mkdtemp(prefix="tlpipe-explore-"))
    write_random_images(tmp / "x.npy", N, seed=0)
    xm = np.load(tmp / "x.npy", mmap_mode="r")
    for b in sizes:
        extract_features(bottom, top, xm[: 2 * b], b, tmp / "b.npy", tmp / "h.npy", "warm-up", forward)
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(ROUNDS):
        for b in sizes:
            wait_quiet()
            load = OtherLoad()
            rate = extract_features(bottom, top, xm, b, tmp / "b.npy", tmp / "h.npy", "x", forward)
            if load.cpus() < QUIET:
                rates[b].append(rate)
    peaks = {}
    for b in sizes:
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks/run.py"), "--rss-child", str(tmp / "x.npy"),
                              "--batch-size", str(b), "--workdir", str(tmp)], capture_output=True, text=True, check=True)
        peaks[b] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    ref = float(np.median(rates[128])) if rates[128] else float("nan")
    print(f"\n{'extract_features batch':<24} {'quiet median img/s':>19} {'best':>6} {'vs 128':>7} {'n quiet':>8} {'peak RSS MB':>12}")
    for b in sizes:
        med = float(np.median(rates[b])) if rates[b] else float("nan")
        best = max(rates[b]) if rates[b] else float("nan")
        print(f"{b:<24} {med:19.0f} {best:6.0f} {med / ref:7.2f} {len(rates[b]):8d} {peaks[b]:12.0f}")


def per_process() -> None:
    settings = {
        "intra=2 inter=1": {"EXPLORE_INTRA": "2", "EXPLORE_INTER": "1"},
        "intra=1 inter=2": {"EXPLORE_INTRA": "1", "EXPLORE_INTER": "2"},
        "intra=1 inter=1": {"EXPLORE_INTRA": "1", "EXPLORE_INTER": "1"},
        "intra=4 inter=1": {"EXPLORE_INTRA": "4", "EXPLORE_INTER": "1"},
        "TF_ENABLE_ONEDNN_OPTS=0": {"TF_ENABLE_ONEDNN_OPTS": "0"},
        "no op determinism": {"EXPLORE_DETERMINISM": "0"},
    }

    def run(env_extra: dict[str, str]) -> dict[str, float]:
        """Median img/s per batch size over the quiet timings (all timings if none was quiet)."""
        env = {**os.environ, **env_extra}
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
        result = {}
        for b, timings in json.loads(out.stdout.strip().splitlines()[-1]).items():
            quiet = [rate for rate, other in timings if other < QUIET]
            result[b] = float(np.median(quiet or [rate for rate, _ in timings]))
            result[b + " quiet"] = len(quiet)
        return result

    print(f"\n{'setting (child process)':<28} {'bs64':>6} {'bs128':>6} {'default bs64':>13} {'default bs128':>14} "
          f"{'ratio bs128':>12} {'quiet runs v/d':>15}")
    for name, env_extra in settings.items():
        default = run({})
        variant = run(env_extra)
        print(f"{name:<28} {variant['64']:6.0f} {variant['128']:6.0f} {default['64']:13.0f} {default['128']:14.0f} "
              f"{variant['128'] / default['128']:12.2f} {variant['128 quiet']:>7}/{default['128 quiet']}", flush=True)


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    elif "--batch-sizes" in sys.argv:
        batch_sizes()
    else:
        if "--no-in-process" not in sys.argv:
            in_process()
        if "--no-per-process" not in sys.argv:
            per_process()
