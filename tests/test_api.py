"""The Python API (`import embedcache as ec`): light to import, the same results as the CLI's path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from test_train import make_store

import embedcache as ec
from embedcache.audio import load_audio
from embedcache.encoders.melpatch import MelPatch
from embedcache.errors import ConfigError, StoreError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_importing_the_package_and_the_cli_loads_no_torch():
    code = ("import sys, embedcache, embedcache_cli.main; "
            "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
    assert "open_store" in dir(ec) and callable(ec.fit)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ec.nope  # noqa: B018


def test_clip_by_id_and_fit_predict_without_files(tmp_path):
    make_store(tmp_path / "s.zarr", valid_tokens=np.full(72, 10))
    store = ec.open_store(tmp_path / "s.zarr", subset={"splits": ["train", "valid"]})
    clip = store.clip("clip005")
    assert clip["tokens"].shape == (10, 8) and clip["split"] == "train" and clip["row"] == 5
    with pytest.raises(StoreError, match="no clip 'clip070' in this store view"):
        store.clip("clip070")  # a test clip, outside the view
    before = sorted(p.name for p in tmp_path.iterdir())
    bank = ec.fit(store, ["linear", "protobin"], lr=1e-2, epochs=2, batch_size=8, device="cpu",
                  prototypes_per_class=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert bank.heads_[1].config["prototypes_per_class"] == 2 and bank.valid_metrics_[0]["map"] > 0
    scores = bank.predict(ec.split(tmp_path / "s.zarr", "test", device="cpu"))
    assert [s.shape for s in scores] == [(18, 3), (18, 3)]
    with pytest.raises(ConfigError, match="takes \\['depth'\\]"):
        ec.fit(store, ["linear"], depth=3)


def test_encode_gives_the_tokens_of_each_file_alone(tiny_manifest):
    files = [tiny_manifest.parent / "audio" / name for name in ("clip000.wav", "clip003.wav")]
    out = ec.encode("melpatch", files)
    assert [t.grid for t in out] == [(6, 4), (3, 4)]  # 1 s and 0.5 s clips
    alone = MelPatch()(torch.from_numpy(load_audio(files[1], 16000))[None], [0]).layers[0][0]
    torch.testing.assert_close(out[1].layers[0], alone)
