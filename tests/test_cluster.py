"""`cluster.engine: ray`: features on a two-node Ray cluster on loopback, byte-identical to local.

The cluster (tests/ray_loopback.py: one CPU per node) is stopped by the PIDs it started. Runs with
engine: local hide Ray (a `ray` package that fails to import comes first on PYTHONPATH), which
shows that engine: local never imports it.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from tests.helpers import OFFLINE, REPO, TINY, command_env, copy_project
from tests.ray_loopback import HEAD, WORKER, free_port, loopback_cluster
from tlpipe.compute.cluster import Shard, plan_shards

FEATURES_OUTS = (
    "data/features/head",
    "data/features/boundary",
    "data/features/backbone.keras",
    "data/features/boundary.json",
)
# What features computed on: differs between the engines by design (one record per Ray node).
COMPUTE_FILE = "data/features/compute.json"


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """host:port of a running two-node Ray cluster on loopback; stopped afterwards."""
    with loopback_cluster() as address:
        yield address


@pytest.fixture(scope="module")
def no_ray(tmp_path_factory) -> dict[str, str]:
    """The project's environment with Ray hidden: `import ray` fails as without the extra."""
    hidden = tmp_path_factory.mktemp("no-ray")
    (hidden / "ray").mkdir()
    (hidden / "ray" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'ray' (hidden by tests/test_cluster.py)\")\n"
    )
    env = command_env()
    env["PYTHONPATH"] = f"{hidden}{os.pathsep}{REPO}"
    return env


def run_in(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, *, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=cwd, env=env or command_env(), capture_output=True, text=True, timeout=900
    )
    result.output = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.output[-3000:]}"
    return result


def features_hashes(project: Path) -> dict[str, str]:
    """{output: md5} of the features stage's data outputs (all but compute.json)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outs = lock["stages"]["features"]["outs"]
    assert COMPUTE_FILE in {out["path"] for out in outs}
    return {out["path"]: out["md5"] for out in outs if out["path"] != COMPUTE_FILE}


def set_cluster(project: Path, *, engine: str, address: str) -> None:
    """Set cluster.engine and cluster.address in params.yaml (the last section, see params.yaml)."""
    params = project / "params.yaml"
    text = params.read_text()
    assert "\ncluster:\n" in text
    lines = [
        f"  engine: {engine}" if line.startswith("  engine:") else line
        for line in text.splitlines()
    ]
    lines = [f"  address: '{address}'" if line.startswith("  address:") else line for line in lines]
    params.write_text("\n".join(lines) + "\n")


def no_features_outputs(project: Path) -> bool:
    """Nothing under data/features/ that looks like a finished output."""
    folder = project / "data/features"
    return not folder.exists() or not [
        path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")
    ]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, no_ray) -> tuple[Path, dict[str, str]]:
    """The tiny offline pipeline with engine: local and Ray hidden; (project, features hashes)."""
    project = copy_project(tmp_path_factory.mktemp("cluster"))
    run_in(["dvc", "exp", "run", *OFFLINE, *TINY], project, no_ray)
    hashes = features_hashes(project)
    assert set(hashes) == set(FEATURES_OUTS) and all(hashes.values())
    return project, hashes


def test_shards_are_whole_batches_covering_every_row():
    rows = {"train": 1000, "val": 130, "test": 7}
    shards = plan_shards(rows, batch_size=32, workers=3, bytes_per_row=4096)
    for split, n in rows.items():
        mine = [shard for shard in shards if shard.split == split]
        assert [shard.start for shard in mine] == sorted(shard.start for shard in mine)
        assert mine[0].start == 0 and mine[-1].stop == n
        assert all(a.stop == b.start for a, b in itertools.pairwise(mine))
        assert all(shard.start % 32 == 0 for shard in mine)
    assert len(shards) >= 4 * 3 - 2  # work for every worker, several shards each
    # Large outputs: shards shrink to MAX_SHARD_BYTES, but never below one batch.
    big = plan_shards({"train": 1000}, batch_size=32, workers=1, bytes_per_row=2**30)
    assert big[:2] == [Shard("train", 0, 32), Shard("train", 32, 64)]


@pytest.mark.slow
def test_ray_engine_writes_the_same_bytes_on_both_nodes(local_run, ray_address):
    project, local_hashes = local_run
    set_cluster(project, engine="ray", address=ray_address)
    assert "features" not in run_in(["dvc", "status", "--json"], project).stdout  # not a param
    result = run_in(["dvc", "repro", "-f", "-s", "features"], project)
    assert features_hashes(project) == local_hashes
    assert f"{HEAD} ran " in result.output and f"{WORKER} ran " in result.output, result.output
    assert "shards on 2 nodes" in result.output
    # Each actor computed with the one CPU Ray gave it, with oneDNN on as the local run was.
    computed_on = json.loads((project / COMPUTE_FILE).read_text())
    assert computed_on["engine"] == "ray"
    assert {node["node"] for node in computed_on["nodes"]} == {HEAD, WORKER}
    assert {(node["onednn"], node["threads"]) for node in computed_on["nodes"]} == {("on", 1)}


def feature_workers() -> list[psutil.Process]:
    """Ray actor processes of FeatureWorker that are computing a shard right now."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "FeatureWorker.extract" in cmdline:
            found.append(process)
    return found


@pytest.mark.slow
def test_a_worker_dying_mid_run_leaves_no_output_and_a_rerun_gives_the_same_bytes(
    local_run, ray_address
):
    project, local_hashes = local_run
    set_cluster(project, engine="ray", address=ray_address)
    stage = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", "features"],
        cwd=project,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    killed = None
    while killed is None and stage.poll() is None and time.monotonic() < deadline:
        computing = feature_workers()
        if computing:
            killed = computing[0]
            killed.kill()  # as the OOM killer would: SIGKILL, mid-shard
        time.sleep(0.02)
    stdout, stderr = stage.communicate(timeout=300)
    assert killed is not None, f"no worker was seen computing a shard:\n{stdout}{stderr}"
    assert stage.returncode != 0
    errors = [line for line in (stdout + stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Ray worker died while computing" in errors[0], stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert no_features_outputs(project)

    run_in(["dvc", "repro", "-f", "-s", "features"], project)
    assert features_hashes(project) == local_hashes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hide_ray", "address", "expected"),
    [
        (True, "auto", "error: cluster.engine: ray needs Ray, which is not installed: pip install"),
        (False, "127.0.0.2:{port}", "error: cluster.address: cannot reach a Ray cluster at"),
    ],
    ids=["missing extra", "unreachable address"],
)
def test_ray_unavailable_is_one_line_and_no_output(local_run, no_ray, hide_ray, address, expected):
    project, _ = local_run
    set_cluster(project, engine="ray", address=address.format(port=free_port(HEAD)))
    result = run_in(
        ["dvc", "repro", "-f", "-s", "features"],
        project,
        no_ray if hide_ray else None,
        check=False,
    )
    assert result.returncode != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), result.output
    assert "Traceback" not in result.output
    assert no_features_outputs(project)
