"""The .npy files: written atomically or row by row, memory-mapped, read by rows, and checked
against their header's promises before numpy parses them (allow_pickle=False: a file from
elsewhere cannot run code)."""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe.core.files import RERUN_HINT, atomic_path, readable_size
from tlpipe.core.runtime import UserError, first_line

NPY_MAGIC = b"\x93NUMPY"
# Limits on files read from data/ and models/ (which may come from a DVC remote or another
# person): a file over them is refused in one line naming the limit, before it is parsed.
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default for np.load; ours are under 200 bytes


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
            f"{path} is corrupt or truncated (its header declares {readable_size(declared)} of "
            f"data, shape {tuple(shape)} of {dtype}, but the file holds "
            f"{readable_size(size - data_offset)}); {RERUN_HINT}"
        )


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
    return first_line(error)


def check_same_rows(arrays: dict[Path, Sized]) -> None:
    """Refuse arrays left by different runs: each must hold one row per image, the same images."""
    rows = {path: len(array) for path, array in arrays.items()}
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"{path} has {count} rows" for path, count in rows.items())
        raise UserError(
            f"inputs from different runs: {listing}; expected the same number in each: "
            "run `dvc repro` to rebuild them"
        )
