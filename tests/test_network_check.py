"""The download preflight reaches a host the way tensorflow-datasets' downloader (requests) will:
through the proxy HTTPS_PROXY / HTTP_PROXY name, unless NO_PROXY exempts the host.

A small HTTP proxy on 127.0.0.1 records what it is asked for and answers 200 (tunnel opened),
404, or 502 (the proxy cannot reach the host). No internet is needed.
"""

from __future__ import annotations

import runpy
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

import pytest

from tlpipe.data.network import unreachable_host

ARCHIVE = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@contextmanager
def connect_proxy(status: int) -> Iterator[tuple[str, list[str]]]:
    """A proxy on 127.0.0.1 answering every request (CONNECT, HEAD) with `status`; yields its URL
    and the requests it was asked, as "METHOD target"."""
    asked: list[str] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            method, target, _ = self.rfile.readline().decode().split(" ", 2)
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # headers
            asked.append(f"{method} {target}")
            reason = HTTPStatus(status).phrase
            self.wfile.write(f"HTTP/1.1 {status} {reason}\r\n\r\n".encode())

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch):
    """Clear every proxy variable (either case), then set the given ones."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_the_host_is_reached_through_the_https_proxy(proxy_env):
    with connect_proxy(200) as (proxy, asked):
        proxy_env(HTTPS_PROXY=proxy)
        assert unreachable_host([ARCHIVE]) is None
    assert asked == ["CONNECT www.cs.toronto.edu:443"]


def test_a_proxy_that_cannot_reach_the_host_is_named(proxy_env):
    with connect_proxy(502) as (proxy, asked):
        proxy_env(HTTPS_PROXY=proxy.replace("http://", "http://user:secret@"))
        reason = unreachable_host([ARCHIVE])
    assert asked == ["CONNECT www.cs.toronto.edu:443"]
    assert reason == f"www.cs.toronto.edu through the proxy {proxy.replace('//', '//user:***@')}"


@pytest.mark.parametrize(("status", "reachable"), [(200, True), (404, True), (502, False)])
def test_http_urls_are_requested_through_the_http_proxy(proxy_env, status, reachable):
    """requests sends an http URL to the proxy as it is (no tunnel); only a gateway error says
    the proxy could not reach the host."""
    with connect_proxy(status) as (proxy, asked):
        proxy_env(HTTP_PROXY=proxy, HTTPS_PROXY="http://127.0.0.1:9")  # the https one is unused
        reason = unreachable_host(["http://data.example.invalid/archive.tar.gz"])
    assert asked == ["HEAD http://data.example.invalid/archive.tar.gz"]
    assert reason == (None if reachable else f"data.example.invalid through the proxy {proxy}")


def test_no_proxy_hosts_are_reached_directly(proxy_env):
    direct = socket.create_server(("127.0.0.1", 0))
    try:
        with connect_proxy(200) as (proxy, asked):
            proxy_env(HTTPS_PROXY=proxy, NO_PROXY="localhost,.example.invalid")
            port = direct.getsockname()[1]
            assert unreachable_host([f"https://localhost:{port}/archive.tar.gz"]) is None
            direct.settimeout(5)
            direct.accept()[0].close()  # the preflight's connection arrived here, not at the proxy
        assert asked == []
    finally:
        direct.close()


def test_the_download_stage_says_which_proxy_failed(in_tmp_project, monkeypatch, proxy_env, capsys):
    monkeypatch.setenv("TFDS_DATA_DIR", str(in_tmp_project / "tfds"))
    with connect_proxy(502) as (proxy, asked), pytest.raises(SystemExit) as stop:
        proxy_env(HTTPS_PROXY=proxy)
        runpy.run_module("stages.download", run_name="__main__")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith(
        f"error: could not reach www.cs.toronto.edu through the proxy {proxy} to download cifar10 "
        "(no network?)"
    )
    assert asked == ["CONNECT www.cs.toronto.edu:443"]
