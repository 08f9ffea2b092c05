"""moto's S3 server on 127.0.0.1 for tests: started as a real process, reached only through the standard AWS_* env."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass
class S3Loopback:
    """A running server: its endpoint and the environment that points the AWS libraries at it."""

    endpoint: str
    env: dict
    bucket: str

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_s3(bucket: str = "embedcache-test"):
    """Start moto's server, point AWS_* at it for this process (and its children), create `bucket`."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra: pip install -e '.[test]'")
    s3fs = pytest.importorskip("s3fs", reason="s3fs is in the test extra: pip install -e '.[test]'")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto's S3 server did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": endpoint,
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    # fsspec caches filesystems by constructor arguments, not by endpoint: start from a clean cache.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        server = S3Loopback(endpoint, env, bucket)
        server.filesystem().mkdir(bucket)
        yield server
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        process.wait(timeout=30)
