"""Before a download: is the host reachable (directly, or through the proxy requests would use),
and is the archive perhaps already in tensorflow-datasets' manual folder? tensorflow-datasets
itself retries a failed download for minutes; this check fails in seconds, saying where to put the
file instead."""

from __future__ import annotations

import base64
import http.client
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

from tlpipe.core.runtime import OFFLINE_DEMO, UserError


def tfds_data_dir() -> Path:
    """tensorflow-datasets' data folder: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets").expanduser()


def unreachable_host(urls: list[str], timeout: float = 3.0) -> str | None:
    """The first host among `urls` that cannot be reached in `timeout` seconds (and the proxy
    tried), else None.

    Reached the way tensorflow-datasets' downloader (requests) will: through the proxy that
    HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name for the URL unless NO_PROXY exempts its host, else
    directly.
    """
    from requests.utils import get_environ_proxies, select_proxy

    for url in urls:
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        proxy = select_proxy(url, get_environ_proxies(url))  # as requests picks it
        try:
            if proxy:
                _ask_proxy(proxy, url, timeout=timeout)
            else:
                socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError:
            via = f" through the proxy {_without_password(proxy)}" if proxy else ""
            return f"{parsed.hostname}{via}"
    return None


def _ask_proxy(proxy: str, url: str, *, timeout: float) -> None:
    """Raise OSError unless the HTTP(S) proxy `proxy` reaches `url`'s host, asked as requests
    asks it: for an https URL, a tunnel (CONNECT host:port answered 200); for an http URL, the
    request itself (HEAD url; a 502/503/504 gateway error means the proxy could not reach it).

    A SOCKS proxy is not checked (requests needs PySocks for it): tensorflow-datasets then tries.
    """
    target = urlparse(url)
    via = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    if via.scheme not in ("http", "https"):
        return
    headers = {}
    if via.username:
        credentials = f"{unquote(via.username)}:{unquote(via.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    kind = http.client.HTTPSConnection if via.scheme == "https" else http.client.HTTPConnection
    connection = kind(
        via.hostname, via.port or (443 if via.scheme == "https" else 80), timeout=timeout
    )
    try:
        if target.scheme == "https":
            connection.set_tunnel(target.hostname, target.port or 443, headers=headers)
            connection.connect()  # sends CONNECT; OSError("Tunnel connection failed: ...")
        else:
            connection.request("HEAD", url, headers=headers)
            status = connection.getresponse().status
            if status in (502, 503, 504):
                raise OSError(f"the proxy answered {status}")
    finally:
        connection.close()


def _without_password(proxy: str) -> str:
    parsed = urlparse(proxy)
    return proxy.replace(f":{parsed.password}@", ":***@") if parsed.password else proxy


def ensure_tfds_prepared(builder, manual_dir: Path) -> None:
    """Download and prepare a tfds dataset, failing fast with instructions when offline.

    tfds retries a failed download for minutes; so before starting, check that every archive is
    either placed in `manual_dir` (tfds then uses it and verifies its checksum) or reachable.
    """
    import tensorflow_datasets as tfds

    if builder.is_prepared():
        return
    url_infos = builder.url_infos or {}
    to_fetch = {
        url: info for url, info in url_infos.items() if not (manual_dir / info.filename).exists()
    }
    host = unreachable_host(list(to_fetch))
    if host is not None:
        files = ", ".join(sorted(info.filename for info in to_fetch.values()))
        raise UserError(
            f"could not reach {host} to download {builder.name} (no network?). Put {files} in "
            f"{manual_dir}/ (checksum-verified), or run the offline demo: {OFFLINE_DEMO}"
        )
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        )
    except NonMatchingChecksumError:
        raise UserError(
            f"an archive in {manual_dir}/ does not match the checksum tensorflow-datasets "
            f"records for {builder.name}; it was not unpacked: replace it with the official file"
        ) from None
