"""What every study shares: timing (best of a few rounds, alternating), the load other processes
put on the machine, the machine itself, child processes and their peak RSS, and the inputs built
the way the stages build theirs (the conv base from `build_conv_base`, uint8 pixels).

Import `tlpipe` before anything imports TensorFlow: it turns oneDNN on and keeps TensorFlow's
start-up notices off the output, as in every stage (tlpipe/startup.py).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

import tlpipe  # noqa: F401  first: oneDNN on, TensorFlow's start-up notices off
from tlpipe.core.cpu import cpu_flags, cpu_model, kernel_flags, onednn_setting

ROOT = Path(__file__).resolve().parents[1]
SEED = 42
CLASSES = 10
UNFREEZE_FROM = "block5_conv1"  # the default cut (`finetune.unfreeze_from: auto` for VGG16)
MATMUL_SIZE = 4096
# float32 4096^2 matmul on the development machine (AVX-512 BF16 EPYC, RESULTS.md): --quick sizes
# its work for this rate and scales it down on slower machines (see `work_scale`).
REFERENCE_GFLOPS = 447.0
SHOWN_SETS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass
class Context:
    """What a study needs to know about this run."""

    mode: str  # quick or full
    workdir: Path
    batch_size: int  # features.batch_size
    finetune_batch: int  # finetune.batch_size
    scale: float = 1.0  # of the image counts: 1 on a machine as fast as the reference
    results: dict = field(default_factory=dict)  # what earlier studies measured

    def count(self, n: int, floor: int = 64) -> int:
        """`n` images scaled to this machine's speed, at least `floor`."""
        return max(floor, int(n * self.scale))


def best_of(runs: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Shortest wall time of each run over `reps` rounds. The runs alternate within each round,
    so a slow spell of this shared machine hits all of them alike and their ratios stay fair;
    other processes can only slow a round down, so the shortest is closest to the code's own."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


class OtherLoad:
    """CPUs' worth of work other processes did while we ran (0 = machine to ourselves), and the
    load averages at the start and at the end."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.started = time.perf_counter()
        self.machine0, self.own0 = self._machine_busy(), self._own_cpu()
        self.loadavg0 = os.getloadavg()

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))

    def _own_cpu(self) -> float:
        t = self.me.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def summary(self) -> dict[str, object]:
        wall = time.perf_counter() - self.started
        other = (self._machine_busy() - self.machine0) - (self._own_cpu() - self.own0)
        return {
            "other_cpu_load": round(max(other, 0.0) / max(wall, 1e-9), 2),
            "loadavg_start": [round(x, 2) for x in self.loadavg0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }


def machine() -> dict[str, object]:
    """The CPU (model, the instruction sets that decide the kernels), oneDNN's setting and cap,
    and whether bfloat16 is native here: what labels every absolute figure."""
    flags, usable = cpu_flags(), kernel_flags()
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "instruction_sets": [name for name in SHOWN_SETS if name in flags],
        "onednn": onednn_setting(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "native_bfloat16": bool(usable & {"avx512_bf16", "amx_bf16"}),
    }


def matmul_run(dtype: str = "float32") -> Callable[[], object]:
    """A MATMUL_SIZE^2 matmul in `dtype` (2 * MATMUL_SIZE^3 flops), warmed up."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((MATMUL_SIZE,) * 2, seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((MATMUL_SIZE,) * 2, seed=(3, 4)), dtype)
    for _ in range(2):
        tf.linalg.matmul(a, b)  # warm-up: thread pools, oneDNN's primitive cache
    return lambda: tf.linalg.matmul(a, b).numpy()


def matmul_gflops(dtype: str, rounds: int, within: float = float("inf")) -> float:
    """The machine's ceiling for `dtype`: GFLOP/s of the fastest of `rounds` more matmuls and of
    the `within` seconds a study measured alternating with its own work. One matmul takes well
    under a second, so extra rounds are cheap and find the ceiling through slow spells (an
    efficiency above 1 is what a ceiling measured in a slow spell looks like)."""
    seconds = min(within, best_of({dtype: matmul_run(dtype)}, rounds)[dtype])
    return 2 * MATMUL_SIZE**3 / seconds / 1e9


def work_scale(mode: str) -> tuple[float, float]:
    """(share of the reference sizes to run, this machine's float32 matmul GFLOP/s). Full mode
    runs the reference sizes; quick sizes its work from the measured rate, so that a 2-core AVX2
    laptop (55 GFLOP/s under load) finishes in minutes, as the reference machine does."""
    gflops = matmul_gflops("float32", rounds=5)
    if mode == "full":
        return 1.0, gflops
    return min(1.0, gflops / REFERENCE_GFLOPS), gflops


def conv_base(image_size: int, seed: int = SEED):
    """The conv base the features stage builds: seeded random VGG16 behind its normalisation
    layer (uint8-valued pixels in), as `stages/features.py` does with `backbone.weights: none`."""
    from tlpipe.core.backbone import build_conv_base
    from tlpipe.core.runtime import seed_everything

    seed_everything(seed)  # what every stage does first: same weights, deterministic ops
    return build_conv_base("vgg16", "none", image_size=image_size)


def write_pixels(path: Path, n: int, size: int, seed: int) -> Path:
    """A prepared-looking .npy: (n, size, size, 3) uint8 random pixels, written in chunks."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for start in range(0, n, 2048):
        stop = min(start + 2048, n)
        out[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3), dtype=np.uint8)
    out.flush()
    del out
    return path


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


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: this one, this interpreter's folder first on PATH (DVC runs
    the stages' `python3`, which must be the venv's also when it is not activated), the repository
    importable, progress bars off."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", **extra}


def run_child(kind: str, cwd: Path, **kwargs: object) -> dict:
    """Run `benchmarks.child` `kind` with `kwargs` (JSON) in `cwd`; its JSON report."""
    report = cwd / f"child-{kind}-{os.getpid()}.json"
    command = [sys.executable, "-m", "benchmarks.child", kind, str(report), json.dumps(kwargs)]
    # tensorflow-datasets reads (and, mocked, never fetches) under the child's folder
    env = child_env(TFDS_DATA_DIR=str(cwd / "tfds"))
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if not report.exists():
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-3000:])
        raise SystemExit(f"child {kind} {kwargs} in {cwd} failed (exit code {done.returncode})")
    result = json.loads(report.read_text())
    report.unlink()
    return result
