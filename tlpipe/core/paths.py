"""Every file and folder the pipeline reads or writes, relative to the project's top folder.

dvc.yaml names the same paths, since DVC tracks them; tests/test_invalidation.py checks that each
data path there is one defined here. Per-split files take the folder as an argument so that tests
can write them elsewhere.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
SPLITS = ("train", "val", "test")

# check: the links in the image folder, which DVC's hash of the folder does not see
FOLDER_LINKS_FILE = Path("data/folder_links.json")
# download: the dataset as uint8 images and integer labels, and where they came from
RAW_DIR = Path("data/raw")
# data.folder when data.dataset is not `folder`: dvc.yaml lists data.folder as a dependency of
# download (so an image folder is one by content), and DVC needs every dependency to exist
NO_FOLDER = Path("data/no_image_folder.txt")
# prepare: resized, 3-channel, normalised images, one-hot labels, seeded splits
PREPARED_DIR = Path("data/prepared")
# features: the conv base's outputs (the head's input) and the freeze-boundary activations
FEATURES_DIR = Path("data/features")
HEAD_FEATURES_DIR = FEATURES_DIR / "head"
BOUNDARY_DIR = FEATURES_DIR / "boundary"
BACKBONE_FILE = FEATURES_DIR / "backbone.keras"
BOUNDARY_INFO_FILE = FEATURES_DIR / "boundary.json"
# features, train, finetune: what each computed on (CPU, instruction sets, oneDNN, threads)
COMPUTE_NAME = "compute.json"
FEATURES_COMPUTE_FILE = FEATURES_DIR / COMPUTE_NAME
# train, finetune: the models
HEAD_FILE = Path("models/head.keras")
MODEL_FILE = Path("models/model.keras")
MODEL_INFO_FILE = Path("models/model.json")
# train, finetune, evaluate: metrics and plots (DVCLive folders, the report)
TRAIN_LIVE_DIR = Path("metrics/train")
FINETUNE_LIVE_DIR = Path("metrics/finetune")
TRAIN_COMPUTE_FILE = TRAIN_LIVE_DIR / COMPUTE_NAME
FINETUNE_COMPUTE_FILE = FINETUNE_LIVE_DIR / COMPUTE_NAME
# train: DVCLive's summary of the dense head's run (best_epoch: analyze trains its folds that long)
TRAIN_SUMMARY_FILE = TRAIN_LIVE_DIR / "metrics.json"
METRICS_FILE = Path("metrics/evaluate.json")
REPORT_DIR = Path("metrics/report")
PER_CLASS_FILE = REPORT_DIR / "per_class.json"  # written by report.write_report
# download (folder datasets): each training row's image file, relative to data.folder
RAW_FILES_NAME = "files.json"
# evaluate: the fine-tuned model's test probabilities, which analyze reads instead of recomputing
PREDICTIONS_DIR = Path("data/predictions")
TEST_PROBABILITIES_FILE = PREDICTIONS_DIR / "test.npy"
# analyze: what the model gets wrong and what looks wrong in the data (docs/analysis.md)
ANALYSIS_DIR = Path("metrics/analysis")
ANALYSIS_SUMMARY_FILE = ANALYSIS_DIR / "summary.json"
LABEL_ISSUES_FILE = ANALYSIS_DIR / "label_issues.csv"
# export: the model for other programs (file names inside EXPORT_DIR) and its model card
EXPORT_DIR = Path("models/export")
SAVED_MODEL_NAME = "saved_model"
LITERT_NAME = "model.tflite"
ONNX_NAME = "model.onnx"
LABELS_NAME = "labels.txt"
MODEL_CARD_FILE = Path("models/MODEL_CARD.md")
EXPORT_SCORES_FILE = Path("metrics/export.json")  # each exported file checked in its runtime
# tlpipe lr-find (no stage: a command's outputs, committed if you like): the sweep's table, picture
LR_FIND_DIR = Path("metrics/lr_find")
LR_FIND_TABLE_FILE = LR_FIND_DIR / "lr_find.tsv"
LR_FIND_PLOT_FILE = LR_FIND_DIR / "lr_find.png"
LR_FIND_SUMMARY_FILE = LR_FIND_DIR / "lr_find.json"
# tlpipe tune: the Optuna study (SQLite), so that a second `tlpipe tune` continues it
TUNE_DIR = Path("tune")
TUNE_STUDY_FILE = TUNE_DIR / "study.db"


def raw_images(split: str, folder: Path = RAW_DIR) -> Path:
    """uint8 images (N, H, W, 1|3) of the dataset's own `train` or `test` split."""
    return folder / f"{split}_images.npy"


def raw_labels(split: str, folder: Path = RAW_DIR) -> Path:
    return folder / f"{split}_labels.npy"


def source_file(folder: Path = RAW_DIR) -> Path:
    """Which dataset the raw arrays came from: its name, exact version, the reader's version."""
    return folder / "source.json"


def raw_files(folder: Path = RAW_DIR) -> Path:
    """The image file of each raw training row (folder datasets only; absent for the others)."""
    return folder / RAW_FILES_NAME


def classes_file(folder: Path) -> Path:
    """The class names, in label order (RAW_DIR and PREPARED_DIR each hold one)."""
    return folder / "classes.json"


def prepared_images(split: str, folder: Path = PREPARED_DIR) -> Path:
    return folder / f"{split}_x.npy"


def prepared_labels(split: str, folder: Path = PREPARED_DIR) -> Path:
    return folder / f"{split}_y.npy"


def prepared_index(split: str, folder: Path = PREPARED_DIR) -> Path:
    """Rows of the raw array each prepared image came from, for tracing a result back."""
    return folder / f"{split}_index.npy"


def head_features(split: str) -> Path:
    return HEAD_FEATURES_DIR / f"{split}.npy"


def boundary_features(split: str) -> Path:
    return BOUNDARY_DIR / f"{split}.npy"
