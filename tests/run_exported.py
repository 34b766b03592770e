"""Classify image files with one exported model, in a process of its own (tests/test_export.py).

    python tests/run_exported.py CLIENT MODEL IMAGE...

CLIENT is how a user would load the file: saved_model (tf.saved_model.load), tflite
(tf.lite.Interpreter with its default XNNPACK delegate), litert (ai_edge_litert), onnx
(onnxruntime) or opencv (cv2.dnn.readNetFromONNX).

Prints JSON: {"rgb": {path: probabilities}, "grey": {path: probabilities of a grey file fed as 1
channel}, "imported": [whichever of tlpipe, keras, tensorflow got imported]}. Images of one size go
in one batch. Only numpy, Pillow and the client's own runtime are used, never tlpipe: what a user
of the exported files has. Each runtime is called as the model card shows.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from PIL import Image


def load(kind: str, path: str) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch -> probabilities, with the runtime of `kind`."""
    if kind == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        return lambda batch: serve(images=tf.constant(batch))["probabilities"].numpy()
    if kind == "tflite":
        import tensorflow as tf

        run = tf.lite.Interpreter(path).get_signature_runner("serving_default")
        return lambda batch: run(images=batch)["probabilities"]
    if kind == "litert":
        from ai_edge_litert.interpreter import Interpreter

        run = Interpreter(path).get_signature_runner("serving_default")
        return lambda batch: run(images=batch)["probabilities"]
    if kind == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path)
        return lambda batch: session.run(["probabilities"], {"images": batch})[0]
    if kind == "opencv":
        import cv2

        net = cv2.dnn.readNetFromONNX(path)

        def forward(batch: np.ndarray) -> np.ndarray:
            net.setInput(batch, "images")
            return net.forward("probabilities")

        return forward
    raise SystemExit(f"unknown client {kind}")


def classify(predict: Callable[[np.ndarray], np.ndarray], images: dict[str, np.ndarray]) -> dict:
    """{path: probabilities}, one batch per image size."""
    by_shape = defaultdict(list)
    for path, pixels in images.items():
        by_shape[pixels.shape].append(path)
    results = {}
    for paths in by_shape.values():
        probabilities = predict(np.stack([images[path] for path in paths]))
        results |= {path: row.tolist() for path, row in zip(paths, probabilities, strict=True)}
    return results


def main() -> None:
    kind, model, *paths = sys.argv[1:]
    predict = load(kind, model)
    rgb, grey = {}, {}
    for path in paths:
        with Image.open(path) as image:
            rgb[path] = np.asarray(image.convert("RGB"), dtype=np.uint8)  # as `tlpipe predict`
            if image.mode == "L":
                grey[path] = np.asarray(image, dtype=np.uint8)[..., np.newaxis]
    imported = [name for name in ("tlpipe", "keras", "tensorflow") if name in sys.modules]
    print(
        json.dumps(
            {"rgb": classify(predict, rgb), "grey": classify(predict, grey), "imported": imported}
        )
    )


if __name__ == "__main__":
    main()
