"""Stage `export`: the fine-tuned model as files other programs can run, and its model card.

Writes models/export/: saved_model/ (TensorFlow SavedModel), model.tflite (LiteRT) and model.onnx
(ONNX), each taking uint8 images of any size, (batch, height, width, 1 or 3), and returning class
probabilities (the resize of `prepare` and the backbone's normalisation are inside the graph),
and labels.txt, the class names in output order. Then models/MODEL_CARD.md: data, params, test
scores per class, input contract, how to load each file, limits. Runs after `evaluate`, whose
scores the card reports.
"""

from pathlib import Path

from tlpipe.compute.archives import load_model, load_model_info
from tlpipe.core.arrays import load_array
from tlpipe.core.files import atomic_folder, atomic_path
from tlpipe.core.jsonfiles import load_json
from tlpipe.core.params import load_params
from tlpipe.core.paths import (
    EXPORT_DIR,
    FEATURES_COMPUTE_FILE,
    FINETUNE_COMPUTE_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_FILE,
    MODEL_INFO_FILE,
    PER_CLASS_FILE,
    SPLITS,
    TRAIN_COMPUTE_FILE,
    prepared_labels,
)
from tlpipe.core.runtime import run_stage
from tlpipe.outputs.card import model_card
from tlpipe.outputs.export import export_model, use_pure_python_protobuf


def size_in_bytes(path: Path) -> int:
    """A file's size, or the total of the files under a folder."""
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def main() -> None:
    use_pure_python_protobuf()  # before TensorFlow loads: see its docstring
    params = load_params()
    # Everything the card needs is read first: a missing input stops the stage before the export.
    info = load_model_info(MODEL_INFO_FILE)
    metrics, per_class = load_json(METRICS_FILE), load_json(PER_CLASS_FILE)
    split_sizes = {split: len(load_array(prepared_labels(split))) for split in SPLITS}
    computed_on = {
        stage: load_json(path)
        for stage, path in (
            ("features", FEATURES_COMPUTE_FILE),
            ("train", TRAIN_COMPUTE_FILE),
            ("finetune", FINETUNE_COMPUTE_FILE),
        )
    }
    model = load_model(MODEL_FILE)

    size, class_names = info["image_size"], info["classes"]
    with atomic_folder(EXPORT_DIR) as folder:
        export_model(model, folder, image_size=size, class_names=class_names)
    card = model_card(
        params=params,
        class_names=class_names,
        image_size=size,
        metrics=metrics,
        per_class=per_class,
        split_sizes=split_sizes,
        parameter_count=model.count_params(),
        file_sizes={path.name: size_in_bytes(path) for path in EXPORT_DIR.iterdir()},
        computed_on=computed_on,
    )
    with atomic_path(MODEL_CARD_FILE) as temporary:
        temporary.write_text(card)
    print(
        f"export: SavedModel, LiteRT and ONNX (uint8 images of any size -> {size}x{size} inside, "
        f"{len(class_names)} class probabilities out) -> {EXPORT_DIR}/; {MODEL_CARD_FILE}"
    )


if __name__ == "__main__":
    run_stage(main)
