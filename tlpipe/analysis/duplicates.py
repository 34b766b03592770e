"""Images that appear twice: exact pixel copies (by hash) and near-duplicates (by their features).

Rows of all splits are numbered in one sequence, train then val then test (`Pool`), so that a
pair can cross splits: a test image with a copy in the training split is a leak, and the test
score overstates what the model does on new images.

Near-duplicates are found by an exact nearest-neighbour search on the cached head features,
centred on the training mean (raw ReLU features all point into the same orthant, so that even
unrelated images have a high cosine similarity) and scaled to unit length. The search reads the
rows in blocks of BLOCK from a scratch file: memory holds two blocks, their (BLOCK, BLOCK)
similarities and NEIGHBOURS candidates per image, never an N x N matrix; time grows as N^2, which
a 60,000-image dataset on two cores does in seconds (docs/analysis.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe.core.arrays import RowFile, array_writer, open_rows, read_rows

BLOCK = 1024  # rows per block of the search
NEIGHBOURS = 5  # near-duplicates kept per image, the most similar first


@dataclass(frozen=True)
class Pool:
    """Several splits' rows as one sequence: global row g is row g - start of its split."""

    splits: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into `splits`, row within that split) of global `rows`."""
        which = np.searchsorted(np.cumsum(self.sizes), rows, side="right")
        return which, rows - self.starts[which]


def pixel_digests(images: list[RowFile]) -> list[bytes]:
    """SHA-256 of each image's uint8 pixels, the splits' rows in order (a few hundred at a time)."""
    digests = []
    for file in images:
        for start in range(0, len(file), 256):
            chunk = read_rows(file, np.arange(start, min(start + 256, len(file))))
            digests.extend(hashlib.sha256(row.tobytes()).digest() for row in chunk)
    return digests


def exact_pairs(digests: list[bytes]) -> list[tuple[int, int]]:
    """(first, other) global rows of every set of identical images: k copies give k - 1 pairs."""
    first: dict[bytes, int] = {}
    pairs = []
    for row, digest in enumerate(digests):
        if digest in first:
            pairs.append((first[digest], row))
        else:
            first[digest] = row
    return pairs


def write_unit_rows(features: list[RowFile], mean_of: RowFile, out: Path) -> RowFile:
    """Every split's flattened head features, minus `mean_of`'s mean row, at unit length, as one
    float32 (N, D) file: the search's input."""
    mean = np.zeros(int(np.prod(mean_of.shape[1:])), np.float64)
    for start in range(0, len(mean_of), BLOCK):
        rows = np.arange(start, min(start + BLOCK, len(mean_of)))
        mean += read_rows(mean_of, rows).reshape(len(rows), -1).sum(axis=0, dtype=np.float64)
    mean = (mean / max(len(mean_of), 1)).astype(np.float32)
    total = sum(len(file) for file in features)
    with array_writer(out, (total, len(mean)), np.float32) as unit:
        at = 0
        for file in features:
            for start in range(0, len(file), BLOCK):
                rows = np.arange(start, min(start + BLOCK, len(file)))
                block = read_rows(file, rows).reshape(len(rows), -1).astype(np.float32) - mean
                norms = np.linalg.norm(block, axis=1, keepdims=True)
                unit[at : at + len(rows)] = block / np.maximum(norms, 1e-12)
                at += len(rows)
    return open_rows(out)


def near_pairs(unit: RowFile, threshold: float) -> list[tuple[int, int, float]]:
    """(row, other, cosine similarity) with row < other, for each image's up to NEIGHBOURS most
    similar others at `threshold` or above, most similar first."""
    found: dict[tuple[int, int], float] = {}
    n = len(unit)
    for start in range(0, n, BLOCK):
        queries = np.arange(start, min(start + BLOCK, n))
        q = read_rows(unit, queries)  # (B, D)
        kept = np.empty((0, 3))  # (query, neighbour, similarity) candidates so far
        for other in range(0, n, BLOCK):
            targets = np.arange(other, min(other + BLOCK, n))
            similarity = q @ read_rows(unit, targets).T  # (B, B')
            i, j = np.nonzero(similarity >= threshold)
            keep = queries[i] != targets[j]  # not itself
            found_here = np.stack([queries[i], targets[j], similarity[i, j]], axis=1)[keep]
            kept = _best_per_query(np.concatenate([kept, found_here]))
        for query, neighbour, value in kept:
            pair = (int(min(query, neighbour)), int(max(query, neighbour)))
            found[pair] = max(found.get(pair, -1.0), round(float(value), 6))
    return sorted(((a, b, s) for (a, b), s in found.items()), key=lambda p: (-p[2], p[0], p[1]))


def _best_per_query(candidates: np.ndarray) -> np.ndarray:
    """The NEIGHBOURS most similar candidates of each query (ties: the lower row)."""
    order = np.lexsort((candidates[:, 1], -candidates[:, 2], candidates[:, 0]))
    candidates = candidates[order]
    query = candidates[:, 0]
    first = np.searchsorted(query, query, side="left")  # where each query's run starts
    return candidates[np.arange(len(query)) - first < NEIGHBOURS]
