"""Shared cache: `dvc push` from one clone, `dvc pull` into a fresh `git clone`, nothing left to
run.

Two remotes: a local directory, and S3 as served on 127.0.0.1 by moto's ThreadedMotoServer (the
test starts it; fake credentials from the environment; the endpoint is in the committed
.dvc/config, as a team would commit its MinIO/S3 endpoint).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.helpers import ALWAYS_RUN, OFFLINE, TINY, UP_TO_DATE, copy_project, run, stages_that_ran

BUCKET = "tlpipe-cache"
COMMIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm"]
CACHED = [
    "data/raw",
    "data/prepared",
    "data/features/head",
    "models/model.keras",
    "models/head.keras",
]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """An S3 server on 127.0.0.1 with an empty bucket; AWS_* set for this process and its
    children."""
    with pytest.MonkeyPatch.context() as env:
        home = tmp_path_factory.mktemp("aws")
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_CONFIG_FILE", str(home / "config"))  # never a developer's real profile
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        env.delenv("AWS_PROFILE", raising=False)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A clone after a tiny offline run, with everything git should hold committed."""
    project = copy_project(tmp_path_factory.mktemp("origin"))
    run(["dvc", "exp", "run", *OFFLINE, *TINY], project)
    run(["git", "add", "-A"], project)  # dvc.lock, params.yaml, uncached metrics and boundary.json
    run([*COMMIT, "tiny run"], project)
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    return project


def objects_in(kind: str, url: str, endpoint: str | None) -> int:
    if kind == "local":
        return sum(1 for path in Path(url).rglob("*") if path.is_file())
    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET)
    return listed.get("KeyCount", 0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_push_then_pull_into_a_fresh_clone_leaves_nothing_to_run(
    origin, s3_endpoint, tmp_path, kind
):
    remote = kind
    url = str(tmp_path / "remote") if kind == "local" else f"s3://{BUCKET}/cache"
    run(["dvc", "remote", "add", remote, url], origin)
    if kind == "s3":
        run(["dvc", "remote", "modify", remote, "endpointurl", s3_endpoint], origin)
    run(["git", "add", ".dvc/config"], origin)
    run([*COMMIT, f"{kind} remote"], origin)

    pushed = run(["dvc", "push", "-r", remote], origin).output
    assert "pushed" in pushed, pushed
    assert objects_in(kind, url, s3_endpoint) > 0
    assert (
        json.loads(run(["dvc", "status", "--cloud", "-r", remote, "--json"], origin).stdout) == {}
    )

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    assert not (
        clone / ".dvc/cache"
    ).exists()  # nothing but git: every cached file must come from the remote
    assert not (clone / "models/model.keras").exists()

    run(["dvc", "pull", "-r", remote], clone)
    for path in CACHED:
        assert (clone / path).exists(), path
    assert (clone / "models/model.keras").read_bytes() == (
        origin / "models/model.keras"
    ).read_bytes()
    assert json.loads(run(["dvc", "status", "--json"], clone).stdout) == UP_TO_DATE
    repro = run(["dvc", "repro"], clone).output
    assert stages_that_ran(repro) == ALWAYS_RUN, repro
