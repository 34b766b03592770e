"""`features` on a Ray cluster (`cluster.engine: ray`): shards of every split run on Ray actors.

Each node of the cluster with CPUs gets one actor, which takes all of the node's CPUs (and one
GPU if it has any), loads data/features/backbone.keras once, and computes whole shards: rows of
one split, starting at a multiple of `features.batch_size`, so every batch is the one the local
path computes and both caches come out byte-identical. The actors read the prepared images, and
the backbone, from the project folder at the same absolute path as this process: every node needs
it on a shared filesystem. Their outputs come back through Ray's object store, and this process
writes each shard's rows into their place in the two caches with the usual atomic writers.

Ray is imported only by the functions here, so neither the default install nor `engine: local`
needs it. There is no retry: a worker that dies stops the stage with one line, no cache is
finished, and rerunning `dvc repro` computes the same bytes from scratch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlpipe.core.arrays import array_writer, release_rows
from tlpipe.core.paths import BACKBONE_FILE, boundary_features, head_features, prepared_images
from tlpipe.core.runtime import UserError, deleted_if_interrupted, first_line

SHARDS_PER_WORKER = 4  # enough shards that a slow node does not hold up the end of the run
MAX_SHARD_BYTES = 64 * 2**20  # of outputs: what one shard holds in memory and in the object store
IN_FLIGHT_PER_WORKER = 2  # the next shard waits at the actor while it computes this one
CONNECT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 300.0  # for an actor to get its node's CPUs and load the backbone
EXTRA = "pip install -e '.[cluster]'"


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of one split."""

    split: str
    start: int
    stop: int


def plan_shards(
    rows: dict[str, int], *, batch_size: int, workers: int, bytes_per_row: int
) -> list[Shard]:
    """Cut each split into shards of whole batches (the last one may be short).

    About SHARDS_PER_WORKER shards per worker over all splits, at most MAX_SHARD_BYTES of
    outputs each, never less than one batch.
    """
    total = sum(rows.values())
    wanted = math.ceil(total / (SHARDS_PER_WORKER * max(workers, 1)))
    rows_per_shard = max(1, min(wanted, MAX_SHARD_BYTES // max(bytes_per_row, 1)))
    rows_per_shard = math.ceil(rows_per_shard / batch_size) * batch_size
    return [
        Shard(split, start, min(start + rows_per_shard, n))
        for split, n in rows.items()
        for start in range(0, n, rows_per_shard)
    ]


@dataclass(frozen=True)
class WorkerSettings:
    """What a FeatureWorker needs; paths are absolute, the same on every node."""

    backbone_file: str
    boundary: str  # the freeze-boundary layer's name
    images: dict[str, str]  # split -> prepared images
    batch_size: int
    dtype: str  # of the caches
    precision: str  # what the conv base computes in, as chosen by the stage
    seed: int
    threads: int  # the CPUs Ray gave the actor


class FeatureWorker:
    """One per node, as a Ray actor: computes shards with the backbone of data/features/."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings  # used by load(): an error there reaches the stage as itself

    def load(self) -> dict:
        """Load the backbone and open the images; the node's address and what it computes on
        (`cpu.compute_record`)."""
        import ray
        import tensorflow as tf

        from tlpipe.compute.archives import load_model
        from tlpipe.compute.features import compile_forward
        from tlpipe.compute.precision import computing_in
        from tlpipe.core.arrays import load_array
        from tlpipe.core.backbone import split_at
        from tlpipe.core.cpu import compute_record
        from tlpipe.core.runtime import seed_everything

        settings = self.settings
        node = ray.util.get_node_ip_address()
        tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
        tf.config.threading.set_inter_op_parallelism_threads(settings.threads)
        seed_everything(settings.seed)
        backbone_file = Path(settings.backbone_file)
        if not backbone_file.is_file():
            raise UserError(
                f"features: Ray node {node} cannot see {backbone_file}; every node needs the "
                "project folder at the same path (a shared filesystem: docs/scaling.md)"
            )
        base = load_model(backbone_file)
        bottom, top = split_at(base, settings.boundary)
        # The local path's precision (chosen on the driver), so that the bytes are the same: the
        # graph keeps the precision its layers had when it was traced, here.
        with computing_in(base, settings.precision):
            self.forward = compile_forward(bottom, top)
            self.forward(tf.zeros((1, *bottom.input.shape[1:])))
        self.images = {split: load_array(Path(path)) for split, path in settings.images.items()}
        self.batch_size = settings.batch_size
        self.dtype = np.dtype(settings.dtype)
        return {
            "node": node,
            **compute_record(threads=settings.threads, precision=settings.precision),
        }

    def extract(self, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
        """(boundary activations, conv-base output) of the shard's rows, batch by batch."""
        import tensorflow as tf

        images = self.images[shard.split]
        boundary, head = [], []
        for start in range(shard.start, shard.stop, self.batch_size):
            stop = min(start + self.batch_size, shard.stop)
            batch = tf.constant(np.asarray(images[start:stop], dtype=np.float32))
            at_boundary, at_output = self.forward(batch)
            boundary.append(at_boundary.numpy().astype(self.dtype))
            head.append(at_output.numpy().astype(self.dtype))
        return np.concatenate(boundary), np.concatenate(head)


def import_ray() -> Any:
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(
            f"cluster.engine: ray needs Ray, which is not installed: {EXTRA} "
            "(or set cluster.engine: local)"
        ) from None
    return ray


def check_reachable(address: str) -> None:
    """Refuse at once a host:port nothing listens on (Ray itself would retry for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UserError(
            f"cluster.address: cannot reach a Ray cluster at {address!r} ({reason}); expected "
            "host:port of a running head node (`ray start --head`) or auto, or set "
            "cluster.engine: local"
        ) from None


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """Connected to the Ray cluster at `address` as a driver; disconnected after the block."""
    ray = import_ray()
    check_reachable(address)
    import tlpipe

    try:
        # py_modules ships this very tlpipe to the workers: they run the code DVC hashed.
        ray.init(
            address=address,
            logging_level=logging.ERROR,
            log_to_driver=False,
            runtime_env={"py_modules": [str(Path(tlpipe.__file__).parent)]},
        )
    except ConnectionError as error:
        raise UserError(
            f"cluster.address: no Ray cluster at {address!r} ({first_line(error)}); "
            "start one with `ray start --head` or set cluster.engine: local"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def provisional(path: Path) -> Iterator[None]:
    """For an output written before the work that completes it (the backbone the actors load):
    deleted if the block fails or is interrupted (run_stage's Ctrl-C handler deletes it too)."""
    with deleted_if_interrupted(path):
        try:
            yield
        except BaseException:
            path.unlink(missing_ok=True)
            raise


def start_workers(ray: Any, **worker_args: Any) -> tuple[list[Any], list[dict]]:
    """One FeatureWorker per alive node with CPUs, pinned to it; (actors, what each computes on:
    its node's address, CPU, oneDNN setting, threads)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= 1]
    if not nodes:
        raise UserError("cluster.address: the Ray cluster has no node with a CPU to run on")
    remote = ray.remote(FeatureWorker)
    actors = []
    for node in nodes:
        cpus = node["Resources"]["CPU"]
        actors.append(
            remote.options(
                num_cpus=cpus,
                num_gpus=min(1, node["Resources"].get("GPU", 0)),
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote(WorkerSettings(threads=int(cpus), **worker_args))
        )
    ready = [actor.load.remote() for actor in actors]
    done, _ = ray.wait(ready, num_returns=len(ready), timeout=START_TIMEOUT_S)
    if len(done) < len(ready):
        raise UserError(
            f"features: {len(ready) - len(done)} of {len(ready)} Ray workers did not start within "
            f"{START_TIMEOUT_S:.0f} s (each needs all of its node's CPUs free)"
        )
    with worker_errors(ray, "starting"):
        return actors, ray.get(ready)


@contextlib.contextmanager
def worker_errors(ray: Any, doing: str) -> Iterator[None]:
    """A worker's failure as one line: its own UserError, or how it died."""
    try:
        yield
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, UserError):
            raise UserError(str(error.cause)) from None
        raise UserError(
            f"features: a Ray worker failed while {doing}: {first_line(error)}"
        ) from None
    except ray.exceptions.RayActorError as error:
        raise UserError(
            f"features: a Ray worker died while {doing} ({first_line(error)}); no cache was "
            "finished: rerun `dvc repro` once the cluster is healthy"
        ) from None


def extract_on_ray(
    ray: Any,
    actors: list[Any],
    nodes: list[str],
    shards: list[Shard],
    *,
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[Counter[str], float]:
    """Run every shard on the actors, each writing its rows into `outputs[split]` (boundary and
    head arrays, as given by storage.array_writer); (shards run per node, images per second)."""
    from tqdm import tqdm

    todo = list(reversed(shards))
    running: dict[Any, tuple[int, Shard]] = {}
    ran: Counter[str] = Counter()

    def submit(worker: int) -> None:
        shard = todo.pop()
        running[actors[worker].extract.remote(shard)] = (worker, shard)

    started = time.perf_counter()
    for _ in range(IN_FLIGHT_PER_WORKER):
        for worker in range(len(actors)):
            if todo:
                submit(worker)
    total = sum(shard.stop - shard.start for shard in shards)
    with tqdm(total=total, unit="img", desc="features (ray)", mininterval=2.0) as progress:
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            worker, shard = running.pop(ref)
            with worker_errors(ray, f"computing {shard.split} rows {shard.start}-{shard.stop}"):
                at_boundary, at_output = ray.get(ref)
            boundary_out, head_out = outputs[shard.split]
            boundary_out[shard.start : shard.stop] = at_boundary
            head_out[shard.start : shard.stop] = at_output
            for out in (boundary_out, head_out):
                release_rows(out, shard.start, shard.stop)
            del at_boundary, at_output, ref
            ran[nodes[worker]] += 1
            progress.update(shard.stop - shard.start)
            if todo:
                submit(worker)
    return ran, total / max(time.perf_counter() - started, 1e-9)


def extract_on_cluster(
    address: str,
    images: dict[str, np.ndarray],
    *,
    boundary: str,
    boundary_shape: tuple[int, ...],
    head_shape: tuple[int, ...],
    batch_size: int,
    dtype: str,
    precision: str,
    seed: int,
) -> list[dict]:
    """Write both caches of every split from shards run on the Ray cluster at `address`; what
    each node computed on (`cpu.compute_record`, with its address).

    `images` are the prepared splits (only their lengths are used here: the workers read them
    from the shared project folder) and data/features/backbone.keras must already be written.
    `boundary_shape` and `head_shape` are the shapes of one image's two outputs.
    """
    with connected(address) as ray:
        actors, workers = start_workers(
            ray,
            backbone_file=str(BACKBONE_FILE.resolve()),
            boundary=boundary,
            images={split: str(prepared_images(split).resolve()) for split in images},
            batch_size=batch_size,
            dtype=dtype,
            precision=precision,
            seed=seed,
        )
        values_per_image = math.prod(boundary_shape) + math.prod(head_shape)
        shards = plan_shards(
            {split: len(x) for split, x in images.items()},
            batch_size=batch_size,
            workers=len(actors),
            bytes_per_row=np.dtype(dtype).itemsize * values_per_image,
        )
        with contextlib.ExitStack() as files:
            outputs = {
                split: (
                    files.enter_context(
                        array_writer(boundary_features(split), (len(x), *boundary_shape), dtype)
                    ),
                    files.enter_context(
                        array_writer(head_features(split), (len(x), *head_shape), dtype)
                    ),
                )
                for split, x in images.items()
            }
            nodes = [worker["node"] for worker in workers]
            ran, rate = extract_on_ray(ray, actors, nodes, shards, outputs=outputs)
    per_node = ", ".join(f"{node} ran {count}" for node, count in sorted(ran.items()))
    print(f"features: ray: {len(shards)} shards on {len(nodes)} nodes: {per_node}")
    print(f"features: {sum(len(x) for x in images.values())} images at {rate:.0f} img/s")
    return workers
