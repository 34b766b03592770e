"""Image folders (`data.dataset: folder`): one sub-folder of images per class, read one image at a
time into data/raw/, with every link and class name checked before any image is decoded (the
`check` stage runs the same check on every run)."""

from __future__ import annotations

import contextlib
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlpipe.core.arrays import row_appender, save_array
from tlpipe.core.jsonfiles import save_json
from tlpipe.core.paths import RAW_DIR, raw_files, raw_images, raw_labels
from tlpipe.core.runtime import UserError
from tlpipe.data.images import IMAGE_SUFFIXES, UNREADABLE_IMAGE, ImageTooLarge, read_image


@dataclass
class Skipped:
    """What `write_folder` left out, for its warnings."""

    unreadable: list[str] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)  # "path (why)"
    empty_classes: list[str] = field(default_factory=list)  # class folders without an image

    def warn(self) -> None:
        """One warning line per kind, on stderr."""
        if self.unreadable:
            print(
                f"warning: skipped {len(self.unreadable)} unreadable image file(s), "
                f"e.g. {self.unreadable[0]}",
                file=sys.stderr,
            )
        if self.too_large:
            print(
                f"warning: skipped {len(self.too_large)} image file(s) over the size limit, "
                f"e.g. {self.too_large[0]}",
                file=sys.stderr,
            )
        if self.empty_classes:
            empty = self.empty_classes
            shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
            print(
                f"warning: left out {len(empty)} class folder(s) without a readable image, so "
                f"not classes: {shown}",
                file=sys.stderr,
            )


def write_folder(folder: Path, image_size: int | None, out_dir: Path = RAW_DIR) -> list[str]:
    """A folder with one sub-folder of images per class (JPEG, PNG, ...), classes sorted by name,
    written to `out_dir` one image at a time; returns the class names.

    Files that are not images by suffix are ignored; image files that cannot be decoded, or that
    declare more than MAX_IMAGE_PIXELS, are skipped with a counted warning, and class folders left
    without an image are named in a warning. Links are followed only within the folder (see
    `_check_link`); class names must fit on one line (see `check_class_name`). Images of
    different sizes need `data.image_size`.
    """
    check_folder(folder)  # every link and class name, before any image is decoded
    labels: list[int] = []
    files: list[str] = []  # each row's file, relative to the folder: analyze names suspects by it
    class_names: list[str] = []
    skipped = Skipped()
    with contextlib.ExitStack() as stack:
        append, shape = None, None  # opened at the first decoded image, which sets the row shape
        for class_dir in _class_dirs(folder):
            decoded = 0
            for path, image in _class_images(class_dir, image_size, skipped):
                if append is None:
                    shape = image.shape
                    append = stack.enter_context(row_appender(raw_images("train", out_dir), shape))
                if image.shape != shape:
                    examples = ", ".join(f"{w}x{h}" for h, w, _ in sorted([shape, image.shape]))
                    raise UserError(
                        f"data.image_size: images in {folder} differ in size ({examples}, ...); "
                        "set data.image_size (e.g. 150) to resize them while reading"
                    )
                append(image[np.newaxis])
                files.append(path.relative_to(folder).as_posix())
                decoded += 1
            if decoded:
                labels.extend([len(class_names)] * decoded)
                class_names.append(class_dir.name)
            else:
                skipped.empty_classes.append(str(class_dir))
        skipped.warn()
        if len(class_names) < 2:
            raise UserError(
                f"data.folder: {folder} has {len(class_names)} class folder(s) with readable "
                "images; expected at least 2 sub-folders of JPEG/PNG images, one per class"
            )
    save_array(raw_labels("train", out_dir), np.asarray(labels, dtype=np.int64))
    save_json(raw_files(out_dir), files)
    return class_names


def _class_images(
    class_dir: Path, image_size: int | None, skipped: Skipped
) -> Iterator[tuple[Path, np.ndarray]]:
    """(file, decoded image) of one class folder, in name order; the others noted in `skipped`."""
    for path in sorted(class_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        try:
            image = read_image(path, image_size)
        except ImageTooLarge as error:
            skipped.too_large.append(f"{path} ({error})")
            continue
        except UNREADABLE_IMAGE:
            skipped.unreadable.append(str(path))
            continue
        yield path, image


def _class_dirs(folder: Path) -> list[Path]:
    """The class folders of an image folder, sorted by name (hidden ones are not classes)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())


def check_folder(folder: Path) -> dict[str, str]:
    """Check what `write_folder` will read of `folder` without decoding an image: every link
    (class folders and the image files in them) must stay inside it (`_check_link`), and every
    class name must fit on one line (`check_class_name`). Returns the links, each path relative
    to `folder` -> where it leads, relative too: what DVC's hash of the folder does not see (it
    skips links to folders), for the `check` stage to record."""
    root = folder.resolve()
    links = {}
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        _check_link(entry, root, folder)
        if not entry.is_dir():
            continue
        check_class_name(entry)
        for path in [entry, *sorted(entry.iterdir())]:
            if path != entry and path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            _check_link(path, root, folder)
            if path.is_symlink():
                target = path.resolve().relative_to(root)
                links[path.relative_to(folder).as_posix()] = target.as_posix()
    return links


# Characters a class name must not hold: it becomes one line of labels.txt and a tab-separated
# column of `tlpipe predict`. Controls (tab, newline, ...), line and paragraph separators (which
# str.splitlines() also breaks at), and surrogates (bytes of a name that are not UTF-8).
NOT_IN_CLASS_NAMES = ("Cc", "Zl", "Zp", "Cs")


def check_class_name(class_dir: Path) -> None:
    """Refuse a class folder whose name would not stay one field of one line."""
    bad = [char for char in class_dir.name if unicodedata.category(char) in NOT_IN_CLASS_NAMES]
    if bad:
        shown = repr(class_dir.name).strip("'\"")
        raise UserError(
            f"data.folder: the class folder {class_dir.parent}/{shown} has {bad[0]!a} in its "
            "name; class names become lines of labels.txt and tab-separated fields of "
            "`tlpipe predict`: rename it without tabs, line breaks or other control characters"
        )


def _check_link(path: Path, root: Path, folder: Path) -> None:
    """Refuse an entry of the image folder that is a link looping, leading nowhere or leading
    outside the folder (`root` is the folder resolved): the dataset would otherwise take in files
    from elsewhere (which `dvc push` would then share), or walk in circles."""
    if not path.is_symlink():
        return
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        raise UserError(
            f"data.dataset: {path} is a link that loops or leads nowhere; class folders and "
            f"images must be files or folders inside {folder} (links within it are followed)"
        ) from None
    if not target.is_relative_to(root):
        raise UserError(
            f"data.dataset: {path} links to {target}, outside {folder}; class folders and "
            f"images must be inside {folder}: copy them in, or point data.dataset at a folder "
            "that holds them"
        )
