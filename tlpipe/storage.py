"""Reading and writing stage outputs safely.

Every file is written under a temporary name in its own folder and renamed into place when it is
complete, so a killed stage never leaves a finished-looking half file. Arrays load with
`allow_pickle=False` and models in Keras safe mode: files from elsewhere cannot run code here.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import re
import secrets
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlpipe.runtime import TEMPORARIES, UserError

RERUN_HINT = "delete it and run `dvc repro` again"
FIXED_SAVE_DATE = "1980-01-01@00:00:00"  # Keras's own date format
NPY_MAGIC = b"\x93NUMPY"
# Limits on files read from data/ and models/ (which may come from a DVC remote or another
# person): a file over them is refused in one line naming the limit, before it is parsed.
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default for np.load; ours are under 200 bytes
MAX_JSON_BYTES = 10 * 2**20  # classes.json and model.json hold a few kB
MAX_JSON_DEPTH = 32  # the pipeline's JSON nests 2 levels deep
MAX_MODEL_JSON_BYTES = 16 * 2**20  # a model's config.json: 0.02-0.4 MB for the backbones
MAX_MODEL_WEIGHTS_BYTES = 4 * 2**30  # model.weights.h5: 59 MB for VGG16 without its top
MAX_MODEL_DEPTH = 64  # a model's config.json: 10-11 levels for the backbones
MAX_ZIP_RATIO = 100  # unpacked / stored size of a member over 1 MiB (Keras stores weights as is)
KERAS_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")  # all a pipeline model holds


def _temporary_name(path: Path) -> Path:
    """A name next to `path` that no other process or workspace uses at the same time: the
    process id (so a later run can tell a dead writer's leftovers from a live one's) and a random
    part (so writers with the same pid, in containers or on another host sharing the folder, still
    differ). The real suffix stays last: Keras refuses to save a model to a name not ending in
    .keras."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _writer_is_gone(temporary: Path) -> bool:
    """Whether the process that named `temporary` (see `_temporary_name`) is no longer running."""
    match = re.search(r"\.tmp-(\d+)", temporary.name)
    if match is None:
        return True
    try:
        os.kill(int(match.group(1)), 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return True
    except PermissionError:  # running, as another user
        return False
    return False


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Readers see either the old file or the new one, never half of one (os.replace is atomic), so
    `tlpipe predict` can load models/model.keras while `dvc repro` rewrites it. Temporaries left
    by killed runs are deleted; those of writers still running (another stage, another queued
    experiment) are left alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.stem}.tmp-*{path.suffix}"):
        if _writer_is_gone(stale):
            stale.unlink(missing_ok=True)
    temporary = _temporary_name(path)
    TEMPORARIES.add(temporary)  # deleted by the Ctrl-C handler of run_stage
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        TEMPORARIES.discard(temporary)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a new empty folder next to `path`; it replaces `path` only if the block succeeds.

    A folder cannot be renamed onto a non-empty one: the old `path` is deleted just before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.stem}.tmp-*{path.suffix}"):
        if _writer_is_gone(stale):  # a killed run's, not a running writer's (see atomic_path)
            shutil.rmtree(stale, ignore_errors=True)
    temporary = _temporary_name(path)
    temporary.mkdir()
    TEMPORARIES.add(temporary)  # deleted by the Ctrl-C handler of run_stage
    try:
        yield temporary
        shutil.rmtree(path, ignore_errors=True)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        TEMPORARIES.discard(temporary)


def load_model_info(path: Path) -> dict:
    """models/model.json as `finetune` writes it: backbone, image_size (the model's input) and
    classes (names in output order)."""
    info = load_json(path)
    if not isinstance(info, dict) or not {"backbone", "image_size", "classes"} <= set(info):
        raise UserError(
            f"{path}: expected the keys backbone, image_size and classes written by the "
            "finetune stage; run `dvc repro`"
        )
    return info


def save_array(path: Path, array: np.ndarray) -> None:
    """Write one .npy file atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.save(file, np.ascontiguousarray(array), allow_pickle=False)


@contextlib.contextmanager
def array_writer(path: Path, shape: tuple[int, ...], dtype: str | np.dtype) -> Iterator[np.memmap]:
    """Yield a writable memory-mapped .npy of `shape`; it appears at `path` only once complete.

    Callers fill it batch by batch, so neither the inputs nor the outputs need to fit in memory.
    """
    with atomic_path(path) as temporary:
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.dtype(dtype), shape=shape)
        try:
            yield array
            array.flush()
        finally:
            del array


@contextlib.contextmanager
def row_appender(
    path: Path, row_shape: tuple[int, ...], dtype: str | np.dtype = np.uint8
) -> Iterator[Callable[[np.ndarray], None]]:
    """Yield `append(rows)`; the .npy at `path` holds every row appended, once the block ends.

    For sources that do not know their length in advance (an image folder with unreadable files,
    a tensorflow-datasets split): rows go straight to disk, and the header, written first with
    room to spare, is rewritten with the final count at the end.
    """
    dtype = np.dtype(dtype)
    count = 0
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        header_bytes = len(_npy_header((10**15, *row_shape), dtype))
        file.write(b"\0" * header_bytes)

        def append(rows: np.ndarray) -> None:
            nonlocal count
            rows = np.ascontiguousarray(rows, dtype=dtype)
            if rows.shape[1:] != tuple(row_shape):
                raise ValueError(f"rows of shape {rows.shape[1:]} in a file of {row_shape} rows")
            file.write(rows.tobytes())
            count += len(rows)

        yield append
        file.seek(0)
        file.write(_npy_header((count, *row_shape), dtype, length=header_bytes))


def _npy_header(shape: tuple[int, ...], dtype: np.dtype, length: int | None = None) -> bytes:
    """A version 1.0 .npy header, padded with spaces to `length` bytes (a multiple of 64)."""
    text = f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, 'fortran_order': False, "
    text += f"'shape': {tuple(shape)!r}, }}"
    fixed = len(NPY_MAGIC) + 2 + 2  # magic, version, header length
    if length is None:
        length = -(-(fixed + len(text) + 1) // 64) * 64
    body = text.ljust(length - fixed - 1).encode("latin1") + b"\n"
    return NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(body)) + body


def release_rows(array: np.ndarray, start: int, stop: int) -> None:
    """Unmap rows [start, stop) of a shared, file-backed np.memmap from this process's memory.

    Every page read or written through a memmap otherwise stays resident until the array is
    closed, so memory would grow with the number of images. MADV_DONTNEED on a shared file
    mapping loses nothing: the data stays in the file (and the page cache) and is mapped back in
    if touched again. Anything that is not such a mapping (plain arrays, copy-on-write memmaps)
    is left alone.
    """
    mapping = getattr(array, "_mmap", None)
    if (
        mapping is None
        or getattr(array, "mode", "c") == "c"
        or not array.flags.c_contiguous
        or stop <= start
    ):
        return
    row_bytes = array.strides[0]
    base = np.frombuffer(mapping, np.uint8).ctypes.data
    first = array.ctypes.data - base + start * row_bytes
    last = first + (stop - start) * row_bytes
    first -= first % mmap.PAGESIZE
    last -= last % mmap.PAGESIZE  # a page shared with the next rows stays mapped
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


@dataclass(frozen=True)
class RowFile:
    """A .npy file read a few rows at a time (see `read_rows`)."""

    path: Path
    offset: int  # where the data starts, after the header
    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]


def open_rows(path: Path) -> RowFile:
    """Check a .npy written by an earlier stage (as `load_array` does) and describe its rows."""
    array = load_array(path)
    if not isinstance(array, np.memmap) or not array.flags.c_contiguous:
        raise UserError(f"{path} is not a plain C-ordered array; {RERUN_HINT}")
    return RowFile(Path(path), array.offset, array.shape, array.dtype)


def read_rows(file: RowFile, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` (ascending) of `file`, with positioned reads, consecutive rows in one read.

    Unlike indexing a memory map, this leaves nothing mapped: what was read stays in the OS page
    cache, not in this process's resident memory, however many rows an epoch reads.
    """
    out = np.empty((len(rows), *file.shape[1:]), file.dtype)
    row_bytes = out[0].nbytes if len(out) else 0
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    with open(file.path, "rb", buffering=0) as handle:
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            chunk = buffer[start * row_bytes : stop * row_bytes]
            got = os.preadv(handle.fileno(), [chunk], file.offset + int(rows[start]) * row_bytes)
            if got != len(chunk):
                raise UserError(f"{file.path} is truncated (row {rows[stop - 1]}); {RERUN_HINT}")
            start = stop
    return out


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    """Load a .npy written by an earlier stage (memory-mapped by default), refusing pickles.

    The header is checked before numpy sees the file: it must be at most MAX_NPY_HEADER_BYTES,
    and the data it declares must be what the file holds, so a forged header (a huge shape over a
    few bytes) is refused instead of allocating terabytes.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: run `dvc repro` to create it")
    _check_npy_size(path)
    try:
        array = np.load(
            path,
            mmap_mode="r" if mmap else None,
            allow_pickle=False,
            max_header_size=MAX_NPY_HEADER_BYTES,
        )
    except (ValueError, EOFError) as error:  # EOFError: an empty file
        raise UserError(
            f"{path} is corrupt or truncated ({_npy_problem(path, error)}); {RERUN_HINT}"
        ) from None
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error}); {RERUN_HINT}") from None
    return array


def _check_npy_size(path: Path) -> None:
    """Refuse a .npy whose header is over MAX_NPY_HEADER_BYTES or declares more data than the
    file holds; anything else (not a .npy, pickles) is left for np.load to judge."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        start = file.read(len(NPY_MAGIC) + 2)
        if len(start) < len(NPY_MAGIC) + 2 or not start.startswith(NPY_MAGIC):
            return
        major = start[-2]
        length_format = "<H" if major == 1 else "<I"
        length_bytes = file.read(struct.calcsize(length_format))
        if len(length_bytes) < struct.calcsize(length_format):
            return
        (header_bytes,) = struct.unpack(length_format, length_bytes)
        if header_bytes > MAX_NPY_HEADER_BYTES:
            raise UserError(
                f"{path} has a {header_bytes}-byte header; the limit is {MAX_NPY_HEADER_BYTES} "
                f"bytes (MAX_NPY_HEADER_BYTES), so it was not written by the pipeline; {RERUN_HINT}"
            )
        file.seek(0)
        try:
            major, _ = np.lib.format.read_magic(file)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(file, max_header_size=MAX_NPY_HEADER_BYTES)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return  # np.load reports the same header, in the words of _npy_problem
        data_offset = file.tell()
    if dtype.hasobject:
        return
    declared = math.prod(int(n) for n in shape) * dtype.itemsize
    if declared > size - data_offset:
        raise UserError(
            f"{path} is corrupt or truncated (its header declares {_bytes(declared)} of data, "
            f"shape {tuple(shape)} of {dtype}, but the file holds {_bytes(size - data_offset)})"
            f"; {RERUN_HINT}"
        )


def _bytes(count: int) -> str:
    """A byte count for people: 812 bytes, 3.4 MB, 7.3 TB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _npy_problem(path: Path, error: Exception) -> str:
    """Why np.load refused `path`, in words: numpy's messages mislead for empty or foreign files."""
    with open(path, "rb") as file:
        start = file.read(len(NPY_MAGIC))
    if not start:
        return "the file is empty"
    if start != NPY_MAGIC:
        return "not a .npy file"
    if "Object arrays" in str(error) or "Python objects" in str(error):
        return "it holds pickled Python objects, which are never loaded: they could run code"
    if "Cannot parse header" in str(error):  # numpy's message quotes the whole header
        return "its header cannot be parsed"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def check_same_rows(arrays: dict[Path, Sized]) -> None:
    """Refuse arrays left by different runs: each must hold one row per image, the same images."""
    rows = {path: len(array) for path, array in arrays.items()}
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"{path} has {count} rows" for path, count in rows.items())
        raise UserError(
            f"inputs from different runs: {listing}; expected the same number in each: "
            "run `dvc repro` to rebuild them"
        )


def save_json(path: Path, data: Any) -> None:
    """Write JSON atomically, indented, keys in a stable order."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_json(path: Path) -> Any:
    """Read a JSON file written by an earlier stage: at most MAX_JSON_BYTES, nested at most
    MAX_JSON_DEPTH levels; one line if not."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise UserError(
                f"{path} is {_bytes(size)}; the limit for the JSON files the pipeline reads is "
                f"{_bytes(MAX_JSON_BYTES)} (MAX_JSON_BYTES); {RERUN_HINT}"
            )
        return _parse_json(path.read_text(), path, max_depth=MAX_JSON_DEPTH)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run `dvc repro` to create it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); {RERUN_HINT}") from None


def _parse_json(
    text: str | bytes, path: Path, *, max_depth: int, limit_name: str = "MAX_JSON_DEPTH"
) -> Any:
    """json.loads, refusing documents nested deeper than `max_depth` (Python's parser recurses,
    so a deep enough document would otherwise end in a RecursionError)."""
    too_deep = UserError(
        f"{path} nests deeper than {max_depth} levels ({limit_name}), which no file the "
        f"pipeline writes does; {RERUN_HINT}"
    )
    try:
        data = json.loads(text)
    except RecursionError:
        raise too_deep from None
    level, nodes = 0, [data]
    while nodes:  # breadth first, one level at a time
        level += 1
        if level > max_depth:
            raise too_deep
        nodes = [
            child
            for node in nodes
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return data


def save_model(model: Any, path: Path) -> None:
    """Save a Keras model atomically as a byte-reproducible .keras file."""
    with atomic_path(path) as temporary:
        model.save(temporary)
        _drop_timestamps(temporary)


def _drop_timestamps(archive: Path) -> None:
    """Rewrite a .keras zip with fixed entry times and save date, so equal models give equal bytes.

    Keras stamps the current time into the zip entries and metadata.json, and Python object ids
    into config.json; without this, every rerun would change the file's hash and DVC would see a
    new model each time.
    """
    with zipfile.ZipFile(archive) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist()]
    # Each entry keeps Keras's own compression (stored): deflating the weights again would cost
    # about 3 s per VGG16-sized model to save 9 % of its size.
    with zipfile.ZipFile(archive, "w") as target:
        for info, data in sorted(entries, key=lambda entry: entry[0].filename):
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata["date_saved"] = FIXED_SAVE_DATE
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = _renumber_shared_objects(data.decode()).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            target.writestr(fixed, data, info.compress_type)


def _renumber_shared_objects(config: str) -> str:
    """Replace Keras's shared_object_id values (Python id()s, new in every process) by 1, 2, 3..."""
    numbers: dict[str, int] = {}

    def renumber(match: re.Match) -> str:
        return f'"shared_object_id": {numbers.setdefault(match.group(1), len(numbers) + 1)}'

    return re.sub(r'"shared_object_id": (\d+)', renumber, config)


def load_model(path: Path) -> Any:
    """Load a .keras model in safe mode (no deserialised Python code); one line if unusable.

    The archive is inspected first: it must hold only the members a Keras model has (no paths
    that would be extracted elsewhere), each within its size limit (no zip bombs), and a config
    nested no deeper than MAX_MODEL_DEPTH.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: run `dvc repro` to create it")
    # Keras would say "File not found" of an empty or truncated file.
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not a usable Keras model (not a .keras zip archive: empty, truncated or "
            f"overwritten); {RERUN_HINT}"
        )
    _check_keras_archive(path)  # before TensorFlow loads: a refusal takes a second, not ten
    import keras

    import tlpipe.normalization  # noqa: F401  registers the layer every pipeline model starts with

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except RecursionError:
        raise UserError(
            f"{path} is not a usable Keras model (its config.json nests layers deeper than "
            f"Python can follow); {RERUN_HINT}"
        ) from None
    except (
        ValueError,
        OSError,
        KeyError,
        TypeError,
        zipfile.BadZipFile,
    ) as error:  # TypeError: unknown classes
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise UserError(
            f"{path} is not a usable Keras model ({first_line}); {RERUN_HINT}"
        ) from None


def _check_keras_archive(path: Path) -> None:
    """Refuse a .keras zip with members other than KERAS_MEMBERS or over their size limits.

    Keras extracts every member to a temporary folder when an archive has more than its three
    (assets), and reads config.json whole into memory; the sizes checked are those the archive
    declares, which Python's zipfile never reads past.
    """
    problem = f"{path} is not a usable Keras model"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                if info.filename not in KERAS_MEMBERS:
                    raise UserError(
                        f"{problem} (it holds {info.filename!r}; a pipeline model holds only "
                        f"{', '.join(KERAS_MEMBERS)}); {RERUN_HINT}"
                    )
                limit, name = (
                    (MAX_MODEL_WEIGHTS_BYTES, "MAX_MODEL_WEIGHTS_BYTES")
                    if info.filename.endswith(".h5")
                    else (MAX_MODEL_JSON_BYTES, "MAX_MODEL_JSON_BYTES")
                )
                unpacks = f"{info.filename} unpacks to {_bytes(info.file_size)} from "
                unpacks += _bytes(info.compress_size)
                if info.file_size > limit:
                    raise UserError(
                        f"{problem} ({unpacks}; the limit is {_bytes(limit)} ({name})); "
                        f"{RERUN_HINT}"
                    )
                if info.file_size > 2**20 and info.file_size > MAX_ZIP_RATIO * info.compress_size:
                    raise UserError(
                        f"{problem} ({unpacks}: a zip bomb? the limit is {MAX_ZIP_RATIO} times "
                        f"(MAX_ZIP_RATIO)); {RERUN_HINT}"
                    )
            if "config.json" in archive.namelist():
                _parse_json(
                    archive.read("config.json"),
                    path / "config.json",
                    max_depth=MAX_MODEL_DEPTH,
                    limit_name="MAX_MODEL_DEPTH",
                )
    except zipfile.BadZipFile as error:
        raise UserError(f"{problem} ({error}); {RERUN_HINT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{problem} (config.json is not valid JSON: {error}); {RERUN_HINT}"
        ) from None
