"""Shared test helpers: planted localised events, and killing a command part-way through a store."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import zarr


def event_tokens(n=120, grid=(8, 4), dim=16, classes=4, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [n, T, D] float32, labels [n, C] uint8): per clip a random background scene; each positive class
    replaces 2 random tokens by its signature.

    Mean pooling dilutes the 2 event tokens among T and mixes them with the scene; max-similarity and attention can
    find them.
    """
    rng = np.random.default_rng(seed)
    num_tokens = grid[0] * grid[1]
    signatures = rng.standard_normal((classes, dim)).astype(np.float32)
    signatures /= np.linalg.norm(signatures, axis=1, keepdims=True)
    labels = (rng.random((n, classes)) < 0.3).astype(np.uint8)
    labels[np.arange(n), np.arange(n) % classes] = 1
    scenes = rng.standard_normal((n, 1, dim)).astype(np.float32) * (2.0 / np.sqrt(dim))
    tokens = scenes + 0.3 * rng.standard_normal((n, num_tokens, dim)).astype(np.float32)
    for i, c in zip(*np.nonzero(labels)):
        where = rng.choice(num_tokens, size=2, replace=False)
        tokens[i, where] = 3.0 * signatures[c] + 0.3 * rng.standard_normal((2, dim))
    return tokens, labels


def kill_after_chunks(command: list[str], store, chunks: int, env: dict | None = None, timeout: float = 60) -> int:
    """Start `command`, SIGKILL it once `store` has at least `chunks` chunks marked done (or after `timeout`
    seconds); returns how many were done when it was killed."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, done = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and done < chunks:
        time.sleep(0.05)
        try:
            done = int(zarr.open_group(str(store), mode="r")["chunk_done"][:].sum())
        except Exception:  # not created yet, or being created
            done = 0
    process.kill()
    process.wait()
    return done
