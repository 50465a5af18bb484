"""An S3 endpoint that cannot be reached: nothing listening on its port, or a socket that accepts
connections and never answers (both on 127.0.0.1, started and stopped here). ``hsk info``,
``verify``, ``train --from-cache`` and ``extract`` each end in one line naming the cache and the
endpoint, exit status 2, within a bound, and write nothing; the default client timeouts bound
the silent endpoint too."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from hsk_cache.store.location import S3_CLIENT_DEFAULTS, Location
from tests.conftest import fails

pytest.importorskip("s3fs")

URL = "s3://hsk/cache"
BOUND_S = 30  # a fault test, not a speed test: the silent endpoint must not hang
FAST = {"connect_timeout": 0.5, "read_timeout": 0.5}  # keeps the silent endpoint's tests short


@pytest.fixture()
def refused():
    """http://127.0.0.1:PORT where nothing listens (a port just freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture()
def silent():
    """http://127.0.0.1:PORT of a socket that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    stop, held = threading.Event(), []

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()


def options(endpoint: str, **config) -> str:
    found = {"key": "testing", "secret": "testing"}
    found["client_kwargs"] = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    return json.dumps({**found, "config_kwargs": config} if config else found)


def command(name: str, storage: str, teacher: str, data: str, out: Path) -> list[str]:
    student = ["--student-layers", "2", "--student-hidden", "32", "--student-heads", "4", "--student-ffn", "64"]
    return {
        "info": ["info", URL],
        "verify": ["verify", URL],
        "train": ["train", "--from-cache", URL, "--out", str(out), *student],
        "extract": ["extract", "--teacher", teacher, "--data", data, "--max-length", "32", "--out", URL],
    }[name] + ["--storage-options", storage]


@pytest.mark.parametrize("name", ["info", "verify", "train", "extract"])
@pytest.mark.parametrize("endpoint", ["refused", "silent"])
def test_an_unreachable_endpoint_is_one_line(endpoint, name, request, tiny_teacher, toy_dir, tmp_path, capsys):
    url = request.getfixturevalue(endpoint)
    out = tmp_path / "student"
    started = time.monotonic()
    err = fails(capsys, command(name, options(url, **FAST), tiny_teacher, toy_dir, out), f"cannot reach {URL} at {url}")
    elapsed = time.monotonic() - started
    assert "--storage-options" in err and "endpoint" in err and "credentials" in err, err
    reason = "could not connect: connection refused" if endpoint == "refused" else "no answer within 0.5 s"
    assert reason in err, err
    assert elapsed < BOUND_S, f"{name} took {elapsed:.1f} s"
    assert not out.exists() and not any(tmp_path.iterdir())  # nothing written


def test_the_default_timeouts_bound_a_silent_endpoint(silent, capsys):
    started = time.monotonic()
    err = fails(capsys, ["info", URL, "--storage-options", options(silent)], f"cannot reach {URL} at {silent}")
    elapsed = time.monotonic() - started
    assert f"no answer within {S3_CLIENT_DEFAULTS['read_timeout']} s" in err and "config_kwargs.read_timeout" in err
    assert elapsed < BOUND_S, f"info took {elapsed:.1f} s with the default timeouts"


def test_missing_credentials_are_one_line(refused, monkeypatch, tmp_path, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = json.dumps({"client_kwargs": {"endpoint_url": refused}, "skip_instance_cache": True})
    fails(capsys, ["info", URL, "--storage-options", storage], f"no credentials for {URL}", "AWS_ACCESS_KEY_ID")


def test_the_users_client_options_win_over_the_defaults():
    mine = {"key": "k", "config_kwargs": {"read_timeout": 60, "retries": {"mode": "standard", "total_max_attempts": 4}}}
    got = Location.of("s3://hsk/cache", mine).storage_options
    assert got["key"] == "k" and got["config_kwargs"] == {**S3_CLIENT_DEFAULTS, **mine["config_kwargs"]}
    assert mine["config_kwargs"] == {"read_timeout": 60, "retries": {"mode": "standard", "total_max_attempts": 4}}
    assert Location.of("s3://hsk/cache").storage_options == {"config_kwargs": S3_CLIENT_DEFAULTS}
    assert Location.of("memory://cache").storage_options == {}  # only s3 clients take botocore's options
