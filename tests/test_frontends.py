"""Front ends: Kaldi fbank variants against the official fixtures, framing arithmetic, padding and errors."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from embedcache.errors import ConfigError
from embedcache.frontends import (
    KaldiFbank,
    KaldiFbankConfig,
    MelDb,
    MelDbConfig,
    atst_mel_config,
    audioset_fbank_config,
    beats_fbank_config,
    eat_fbank_config,
)


def _input(encoder_fixtures, folder="ast"):
    return torch.from_numpy(np.load(encoder_fixtures / folder / "input.npy"))


def test_audioset_fbank_matches_ast_fixture_raw_and_padded(encoder_fixtures):
    wave = _input(encoder_fixtures)
    frontend = KaldiFbank(audioset_fbank_config())
    raw = frontend.log_mel(wave).numpy()
    features = frontend(wave).numpy()
    np.testing.assert_allclose(raw, np.load(encoder_fixtures / "ast" / "expected_fbank_raw.npy"), atol=1e-3, rtol=0)
    np.testing.assert_allclose(features, np.load(encoder_fixtures / "ast" / "expected_fbank.npy"), atol=1e-4, rtol=0)
    assert features.shape == (1, 1024, 128)


def test_beats_fbank_matches_beats_fixture(encoder_fixtures):
    wave = _input(encoder_fixtures, "beats")
    features = KaldiFbank(beats_fbank_config())(wave).numpy()
    assert features.shape == (1, 298, 128)
    np.testing.assert_allclose(features, np.load(encoder_fixtures / "beats" / "expected_fbank.npy"), atol=1e-4, rtol=0)


def test_eat_fbank_uses_rounded_constants_on_the_same_log_mel(encoder_fixtures):
    wave = _input(encoder_fixtures)
    raw = torch.from_numpy(np.load(encoder_fixtures / "ast" / "expected_fbank_raw.npy"))
    features = KaldiFbank(eat_fbank_config())(wave)
    expected = (torch.nn.functional.pad(raw, (0, 0, 0, 1024 - 298)) + 4.268) / (4.569 * 2)
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=0)


def test_frame_counts_follow_snip_edges_arithmetic():
    config = KaldiFbankConfig(target_frames=None)
    assert config.window_samples == 400 and config.hop_samples == 160
    assert config.raw_frames(160000) == 998
    assert config.raw_frames(399) == 0
    assert config.num_frames(160000) == 998
    assert audioset_fbank_config().num_frames(16000) == 1024
    wave = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert KaldiFbank(config)(wave).shape == (2, 98, 128)


def test_padding_is_zero_log_then_normalised_and_crop_keeps_the_start():
    gen = torch.Generator().manual_seed(1)
    wave = torch.randn(1, 16000 * 3, generator=gen) * 0.1
    long_frontend = KaldiFbank(KaldiFbankConfig(target_frames=None))
    padded = KaldiFbank(KaldiFbankConfig(target_frames=400))(wave)
    cropped = KaldiFbank(KaldiFbankConfig(target_frames=100))(wave)
    full = long_frontend(wave)
    pad_value = 4.2677393 / (4.5689974 * 2)
    assert padded.shape == (1, 400, 128)
    torch.testing.assert_close(padded[0, 298:], torch.full((102, 128), pad_value))
    torch.testing.assert_close(padded[:, :298], full)
    torch.testing.assert_close(cropped, full[:, :100])


def test_waveform_mean_removal_and_scale_are_applied():
    gen = torch.Generator().manual_seed(2)
    wave = torch.randn(1, 8000, generator=gen) * 0.1
    frontend = KaldiFbank(KaldiFbankConfig(target_frames=None))
    # Kaldi removes each frame's DC as well, so a constant offset changes nothing after the clip mean is removed.
    torch.testing.assert_close(frontend(wave + 0.3), frontend(wave), atol=1e-4, rtol=0)
    beats = KaldiFbank(beats_fbank_config())
    unscaled = KaldiFbank(dataclasses.replace(beats_fbank_config(), waveform_scale=1.0))
    # log(power * 2^30) = log(power) + 30 ln 2, then divided by 2 * std; 128 bins leave a few low bins empty
    # (no FFT bin inside them), which sit at the log(eps) floor in both and are excluded.
    filled = unscaled.log_mel(wave) > np.log(torch.finfo(torch.float32).eps) + 1
    shift = 30 * np.log(2) / (2 * 6.55582)
    difference = (beats(wave) - unscaled(wave))[filled]
    assert filled.float().mean() > 0.95
    torch.testing.assert_close(difference, torch.full_like(difference, shift), atol=2e-3, rtol=0)


def test_describe_is_json_and_names_the_constants():
    described = beats_fbank_config().describe()
    assert json.loads(json.dumps(described)) == described
    assert described["kind"] == "kaldi-fbank"
    assert described["window_type"] == "povey" and described["waveform_scale"] == 32768.0
    assert described["mean"] == 15.41663 and described["target_frames"] is None


def test_bad_config_and_input_raise_config_error():
    with pytest.raises(ConfigError, match="window_type"):
        KaldiFbankConfig(window_type="hann")
    with pytest.raises(ConfigError, match="target_frames"):
        KaldiFbankConfig(target_frames=0)
    frontend = KaldiFbank(KaldiFbankConfig())
    with pytest.raises(ConfigError, match=r"\[B, S\]"):
        frontend(torch.zeros(16000))
    with pytest.raises(ConfigError, match="shorter than one"):
        frontend(torch.zeros(1, 100))


def test_mel_db_matches_torchaudio_per_clip_and_batch_floors():
    import torchaudio

    gen = torch.Generator().manual_seed(3)
    loud = torch.randn(1, 16000, generator=gen) * 0.3
    quiet = torch.randn(1, 16000, generator=gen) * 1e-5
    quiet[:, 8000:] = 0.0  # digital silence: the top_db floor matters
    wave = torch.cat([loud, quiet])
    config = atst_mel_config()
    mel = torchaudio.transforms.MelSpectrogram(
        16000, f_min=60, f_max=7800, hop_length=160, win_length=1024, n_fft=1024, n_mels=64
    )(wave[:, None])  # [B, 1, 64, T]: 4-D input gives a per-clip floor
    db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80)(mel)
    expected = ((db - (-79.6482)) / (50.6842 + 79.6482) * 2 - 1)[:, 0].transpose(1, 2)
    features = MelDb(config)(wave)
    assert features.shape == (2, 101, 64) and config.num_frames(16000) == 101
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=0)
    # A batch-wide floor (3-D torchaudio input, as Dasheng) lifts the quiet clip's floor to the loud clip's.
    batch = MelDbConfig(top_db=80, top_db_scope="batch", minmax=None)
    batch_db = MelDb(batch)(wave)
    reference = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80)(mel[:, 0]).transpose(1, 2)
    torch.testing.assert_close(batch_db, reference, atol=1e-3, rtol=0)
    assert batch_db[1].min() > MelDb(dataclasses.replace(batch, top_db_scope="sample"))(wave)[1].min() + 10
    described = json.loads(json.dumps(config.describe()))
    assert described["kind"] == "mel-db" and described["minmax"] == [-79.6482, 50.6842]
    with pytest.raises(ConfigError, match="top_db_scope"):
        MelDbConfig(top_db_scope="clip")
