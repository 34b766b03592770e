"""Child processes of the benchmark, one job each, so that each peak RSS is a process's own:

    python -m benchmarks.child <kind> <report.json> '<JSON keyword arguments>'

`rss`: the features stage's extraction on a memory-mapped file of uint8 images; `stage`: a stage
module (or `tlpipe.outputs.cli`) run as `python -m` runs it. Each writes its report, peak RSS
included.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import runpy
import sys
from pathlib import Path

from benchmarks.harness import UNFREEZE_FROM, conv_base, peak_rss_mb


def extract(images: str, batch_size: int, workdir: str, precision: str) -> dict:
    """extract_features over the memory-mapped `images`, as stages/features.py calls it."""
    import psutil

    from tlpipe.compute.features import compile_forward, extract_features
    from tlpipe.compute.precision import computing_in
    from tlpipe.core.arrays import load_array
    from tlpipe.core.backbone import boundary_layer, split_at

    pixels = load_array(Path(images))  # (N, 32, 32, 3) uint8, memory-mapped
    base = conv_base(pixels.shape[1])
    bottom, top = split_at(base, boundary_layer(base, UNFREEZE_FROM))
    before = psutil.Process().memory_info().rss
    with computing_in(base, precision):  # the one the parent chose, as the stage does
        rate = extract_features(
            bottom,
            top,
            pixels,
            batch_size=batch_size,
            boundary_path=Path(workdir) / "boundary.npy",
            head_path=Path(workdir) / "head.npy",
            label="rss",
            forward=compile_forward(bottom, top),
        )
    return {
        "n": len(pixels),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": before / 2**20,
        "img_s": rate,
    }


def stage(module: str, args: list[str], mock_tfds: int, report: Path) -> None:
    """Run `module` as `python -m` would; at exit (stages call sys.exit), write the peak RSS."""
    atexit.register(lambda: report.write_text(json.dumps({"peak_rss_mb": peak_rss_mb()})))
    sys.argv = [module, *args]
    context = contextlib.nullcontext()
    if mock_tfds:  # tensorflow-datasets' mock data: the real download path, random pixels
        import tensorflow_datasets as tfds

        context = tfds.testing.mock_data(num_examples=mock_tfds)
    with context:
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def main() -> None:
    kind, report, kwargs = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    if kind == "rss":
        report.write_text(json.dumps(extract(**kwargs)))
    elif kind == "stage":
        stage(kwargs["module"], kwargs.get("args", []), kwargs.get("mock_tfds", 0), report)
    else:
        raise SystemExit(f"unknown child kind {kind!r}")


if __name__ == "__main__":
    main()
