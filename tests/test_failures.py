"""Hard failures with real processes: kill -9 mid-extract (local and S3), concurrent shards, a full disk.

Every extract here is its own OS process running `embedcache extract`, forked from tests/cli_forkserver.py so the
imports are paid once; processes are killed with SIGKILL. The S3 server is moto's, on 127.0.0.1. After each fault
the store is compared object by object with an uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_dataset
from s3_loopback import running_s3

from embedcache.errors import StoreError
from embedcache.extract import ExtractConfig, extract
from embedcache.store import TokenStore, urls
from embedcache.store.verify import PARTIAL_SUFFIX, verify_store
from embedcache.store.writer import chunk_markers

TESTS = Path(__file__).resolve().parent
N_CLIPS, CHUNK_CLIPS = 24, 1  # 24 one-clip chunks: room for five kills, each after at least one new chunk
N_CHUNKS = N_CLIPS // CHUNK_CLIPS
KILL_SEED = 20260501


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("failures") / "data", n_clips=N_CLIPS)


@pytest.fixture(scope="module")
def clean(dataset, tmp_path_factory) -> dict[str, bytes]:
    """Every object of an uninterrupted single-process run, except the root zarr.json (it holds a timestamp)."""
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    extract(ExtractConfig(encoder="melpatch", manifest=str(dataset), out=str(out), workers=0, progress=False,
                          chunk_clips=CHUNK_CLIPS, batch_size=CHUNK_CLIPS))
    return objects(str(out))


@pytest.fixture(scope="module")
def s3():
    with running_s3("failure-tests") as server:
        yield server


@dataclass
class Child:
    """One forked `embedcache` process."""

    server: ForkServer
    pid: int
    stdout_path: Path
    stderr_path: Path
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.ask({"op": "poll", "pid": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"embedcache process {self.pid} still running after {timeout} s")
            time.sleep(0.02)
        return self.returncode

    def kill(self) -> int:
        os.kill(self.pid, signal.SIGKILL)
        self.returncode = self.server.ask({"op": "wait", "pid": self.pid})["returncode"]
        return self.returncode

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


class ForkServer:
    """Client of tests/cli_forkserver.py."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.count = itertools.count()
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "cli_forkserver.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            pytest.fail("the fork server died")
        return json.loads(line)

    def run(self, args: list[str]) -> Child:
        n = next(self.count)
        out, err = self.logs / f"{n}.out", self.logs / f"{n}.err"
        env = {key: value for key, value in os.environ.items() if key.startswith("AWS_")}
        pid = self.ask({"op": "run", "args": args, "env": env, "stdout": str(out), "stderr": str(err)})["pid"]
        return Child(self, pid, out, err)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("logs"))
    yield server
    server.close()


def objects(url: str) -> dict[str, bytes]:
    store = urls.open_store(url, "r")
    keys = [k for k in urls.list_keys(store) if k != "zarr.json" and not k.endswith(PARTIAL_SUFFIX)]
    return dict(zip(keys, urls.get_many(store, keys)))


def command(manifest: Path, out: str, *extra: str, slow: bool = True) -> list[str]:
    # slow_encoder is melpatch plus 0.25 s per batch: the same tokens, with time to interrupt it.
    return ["extract", "--encoder", "slow_encoder:create" if slow else "melpatch", "--manifest", str(manifest),
            "--out", out, "--workers", "0", "--chunk-clips", str(CHUNK_CLIPS), "--batch-size", str(CHUNK_CLIPS),
            "--no-progress", *extra]


def markers_done(url: str) -> int:
    try:
        return int(chunk_markers(urls.open_group(url, "r")).sum())
    except (StoreError, KeyError, FileNotFoundError):
        return 0  # not created yet


def assert_same_as_clean(url: str, clean: dict[str, bytes]) -> None:
    got = objects(url)
    assert sorted(got) == sorted(clean), set(got) ^ set(clean)
    different = [key for key in clean if got[key] != clean[key]]
    assert not different, f"objects differ from the uninterrupted run: {different[:5]}"
    store = TokenStore.open(url)
    ids = store.clip_ids.tolist()
    assert ids == [f"clip{i:03d}" for i in range(N_CLIPS)] and len(set(ids)) == N_CLIPS  # none lost or duplicated
    assert verify_store(url).ok


def kill_sequence(forks: ForkServer, manifest: Path, url: str, clean: dict[str, bytes]) -> list[dict]:
    """Five extract processes, each killed with SIGKILL at a seeded random point after it wrote a new chunk."""
    rng = np.random.default_rng(KILL_SEED)
    targets = sorted(rng.choice(np.arange(1, 16), size=5, replace=False).tolist())
    delays = rng.uniform(0.0, 0.3, size=5).tolist()
    log = []
    for target, delay in zip(targets, delays):
        before = markers_done(url)
        process = forks.run(command(manifest, url))
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            done = markers_done(url)
            if done > before and done >= target:
                break
            time.sleep(0.02)
        time.sleep(delay)
        returncode = process.kill()
        after = markers_done(url)
        assert returncode == -signal.SIGKILL, (log, before, after, target, process.stderr[-2000:])
        assert before < after < N_CHUNKS, (before, after)
        # Whatever is marked done is already final: byte-identical to the uninterrupted run.
        group = urls.open_group(url, "r")
        now = objects(url)
        for chunk in np.flatnonzero(chunk_markers(group)):
            key = f"tokens/layer_0/c/{chunk}/0/0"
            assert now[key] == clean[key], key
        with pytest.raises(StoreError, match="still being written or was interrupted"):
            TokenStore.open(url)
        log.append({"target": target, "delay": round(delay, 3), "before": before, "after": after})
    finished = forks.run(command(manifest, url))
    assert finished.wait() == 0, finished.stderr[-3000:]
    assert f"{N_CLIPS - log[-1]['after'] * CHUNK_CLIPS} clips extracted" in finished.stdout
    assert_same_as_clean(url, clean)
    return log


def test_kill_9_at_five_points_then_resume_local(forks, dataset, clean, tmp_path):
    log = kill_sequence(forks, dataset, str(tmp_path / "killed.zarr"), clean)
    assert len(log) == 5


def test_kill_9_at_five_points_then_resume_s3(forks, dataset, clean, s3):
    log = kill_sequence(forks, dataset, s3.url("killed.zarr"), clean)
    assert len(log) == 5


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_shards_equal_a_single_process_run(forks, dataset, clean, tmp_path, request, where):
    url = str(tmp_path / "sharded.zarr") if where == "local" else request.getfixturevalue("s3").url("sharded.zarr")
    # Shards 2 and 1 start first: they must wait for shard 0 to create the store.
    processes = [forks.run(command(dataset, url, "--shard", f"{i}/3")) for i in (2, 1, 0)]
    for process in processes:
        assert process.wait() == 0, process.stderr[-3000:]
    assert sum("store complete" in process.stdout for process in processes) >= 1
    assert_same_as_clean(url, clean)


def _mount_small_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("a full-disk test needs root to mount a small tmpfs")
    path.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()})")


def _fill(directory: Path) -> Path:
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_disk_full_mid_extract_is_a_clear_error_and_resumes_after_freeing_space(forks, dataset, clean, tmp_path):
    mount = tmp_path / "small"
    _mount_small_tmpfs(mount, "1m")  # the store's raw tokens (295 kB) fit, so the up-front check passes
    try:
        url = str(mount / "s.zarr")
        process = forks.run(command(dataset, url))
        deadline = time.monotonic() + 120
        while markers_done(url) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        filler = _fill(mount)  # another program takes the rest of the disk
        assert process.wait() == 1, (process.stdout, process.stderr)
        err = process.stderr
        assert "the disk is full" in err and "re-run the same command to resume" in err
        assert "Traceback" not in err
        done = markers_done(url)
        assert 2 <= done < N_CHUNKS
        filler.unlink()
        resumed = forks.run(command(dataset, url))
        assert resumed.wait() == 0, resumed.stderr[-3000:]
        assert f"{N_CLIPS - done * CHUNK_CLIPS} clips extracted" in resumed.stdout
        assert_same_as_clean(url, clean)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
