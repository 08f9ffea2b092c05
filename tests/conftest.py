"""Shared test helpers: paths to the repository and to ../shared fixtures."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture
def encoder_fixtures() -> Path:
    """The encoder parity fixtures in ../shared/fixtures/encoders, or skip when this clone has none."""
    path = SHARED_FIXTURES / "encoders"
    if not path.is_dir():
        pytest.skip(f"encoder parity fixtures not found at {path} (they live in the project's shared/ folder)")
    return path


def write_tiny_dataset(root: Path, n_clips: int = 12, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """Generated multi-label clips (tones at class-specific frequencies, some shorter than `seconds`) + manifest."""
    import numpy as np
    import soundfile

    root.mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    freqs = {"low": 220.0, "mid": 880.0, "high": 3520.0}
    splits = ["train", "train", "train", "valid", "test", "train"]
    rows = ["clip_id,path,labels,split"]
    for i in range(n_clips):
        length = int(sample_rate * seconds * (0.5 if i % 4 == 3 else 1.0))
        names = [name for j, name in enumerate(freqs) if (i >> j) & 1] or ["low"]
        t = np.arange(length) / sample_rate
        wave = 0.01 * rng.standard_normal(length)
        for name in names:
            wave += 0.3 * np.sin(2 * np.pi * freqs[name] * t)
        path = root / "audio" / f"clip{i:03d}.wav"
        soundfile.write(path, wave.astype(np.float32), sample_rate, subtype="PCM_16")
        rows.append(f"clip{i:03d},audio/{path.name},{';'.join(names)},{splits[i % len(splits)]}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.fixture
def tiny_manifest(tmp_path) -> Path:
    """A 12-clip multi-label manifest of generated tones, one clip in four half as long as the rest."""
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture
def one_thread():
    """Tiny tensors train faster on one thread, and a busy 2-core machine stops thrashing; restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lightning_attribute_dict(monkeypatch):
    """A stand-in for pytorch_lightning's AttributeDict, importable only while the test pickles it."""
    import sys
    import types

    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    modules = {name: types.ModuleType(name) for name in names}
    attribute_dict = type("AttributeDict", (dict,), {"__module__": names[-1]})
    modules[names[-1]].AttributeDict = attribute_dict
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return attribute_dict
