"""One exported file run in its own runtime, in a process of its own (the export stage's check).

    python -m tlpipe.outputs.exported_run RUNTIME FILE IMAGES.npy PROBABILITIES.npy LATENCY.json

RUNTIME is tensorflow (a SavedModel), litert (ai_edge_litert) or onnxruntime: what a user of the
file loads it with, called as the model card shows. Classifies IMAGES (uint8, (n, h, w, 3)) in
batches, writes their probabilities (n, classes) float32 to PROBABILITIES.npy, and then
{"latency_s": ...} to LATENCY.json: the median of single-image calls on the first image, after
warm-up calls, with the runtime's default thread count. Nothing of tlpipe's but the package's
start-up is imported.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np

BATCH = 64  # images per call when classifying the split
WARM_UP, TIMED = 5, 30  # single-image calls: not timed (first-call set-up), then timed


def runner(runtime: str, path: str) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch -> probabilities, with `runtime`."""
    if runtime == "tensorflow":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        return lambda batch: serve(images=tf.constant(batch))["probabilities"].numpy()
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        run = Interpreter(path).get_signature_runner("serving_default")
        return lambda batch: run(images=batch)["probabilities"]
    if runtime == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda batch: session.run(["probabilities"], {"images": batch})[0]
    raise SystemExit(f"unknown runtime {runtime!r}")


def single_image_latency(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> float:
    """Median seconds of one call on one image (1, h, w, 3)."""
    for _ in range(WARM_UP):
        predict(image)
    times = []
    for _ in range(TIMED):
        start = time.perf_counter()
        predict(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    runtime, path, images_path, out_path, latency_path = sys.argv[1:]
    images = np.load(images_path, mmap_mode="r")
    predict = runner(runtime, path)
    probabilities = [
        np.asarray(predict(np.ascontiguousarray(images[start : start + BATCH])), np.float32)
        for start in range(0, len(images), BATCH)
    ]
    np.save(out_path, np.concatenate(probabilities))
    latency = single_image_latency(predict, np.ascontiguousarray(images[:1]))
    with open(latency_path, "w") as file:  # last: its presence says the run got to the end
        json.dump({"latency_s": latency}, file)


if __name__ == "__main__":
    main()
