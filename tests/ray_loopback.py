"""A two-node Ray cluster on loopback, for tests/test_cluster.py and benchmarks/run.py.

Head on 127.0.0.2, a worker node on 127.0.0.3: Ray rewrites 127.0.0.1 to the host's routable
address, other loopback addresses it keeps. Only the processes started here are stopped, by PID:
`ray stop` would kill every Ray process on the host.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import psutil

from tests.helpers import VENV_BIN, command_env

HEAD, WORKER = "127.0.0.2", "127.0.0.3"


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def ray_command(*args: str) -> list[str]:
    return [str(VENV_BIN / "ray"), *args, "--disable-usage-stats", "--block"]


def live_nodes(address: str) -> int:
    status = subprocess.run(
        [str(VENV_BIN / "ray"), "status", "--address", address],
        capture_output=True,
        text=True,
        env=command_env(),
        timeout=60,
    )
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return active.count(" node_")


@contextlib.contextmanager
def loopback_cluster(cpus_per_node: int = 1) -> Iterator[str]:
    """host:port of a running two-node Ray cluster on loopback; stopped after the block."""
    temp_dir = tempfile.mkdtemp(prefix="tlray-")  # short: Ray's socket paths must fit 107 bytes
    address = f"{HEAD}:{free_port(HEAD)}"
    common = [f"--num-cpus={cpus_per_node}", f"--temp-dir={temp_dir}"]
    head = worker = None
    try:
        head = subprocess.Popen(
            ray_command(
                "start",
                "--head",
                f"--node-ip-address={HEAD}",
                f"--port={address.rsplit(':', 1)[1]}",
                "--include-dashboard=false",
                *common,
            ),
            env=command_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while live_nodes(address) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray head node did not start")
            time.sleep(1)
        worker = subprocess.Popen(
            ray_command("start", f"--address={address}", f"--node-ip-address={WORKER}", *common),
            env=command_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while live_nodes(address) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray worker node did not join")
            time.sleep(1)
        yield address
    finally:
        stop_started([process for process in (worker, head) if process is not None])
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_started(processes: list[subprocess.Popen]) -> None:
    """Stop the `ray start` processes and everything they started, by PID, and nothing else."""
    started = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            started += psutil.Process(process.pid).children(recursive=True)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    for child in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(started, timeout=30)
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
