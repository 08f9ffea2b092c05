"""Faithful tokens for every clip length, through `embedcache extract` with its default clip policy.

For every family, clips much shorter than native, native, odd and longer than native go through the CLI in one
mixed-length batch. Each stored row must equal the family's official pipeline run on that clip alone: the official
fixture outputs where there is one (the 3 s input), else a reference forward written step by step from the official
preprocessing (fbank/mel on the clip's own samples, padding/cropping where the official code does it, chunking).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import torchaudio
from click.testing import CliRunner
from torchaudio.compliance import kaldi

from embedcache.encoders import create
from embedcache.store import TokenStore
from embedcache_cli.main import main

ATOL = RTOL = 1e-4
RATE = 16000
# Much shorter than native, an odd length, native (10 s), longer than native; the fixture's 3 s input is added.
SECONDS = {"short": 0.5, "odd": 4.37, "native": 10.0, "long": 12.5}


def _noise(seconds: float, seed: int) -> np.ndarray:
    gen = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.1 * gen.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (300 + 50 * seed) * t)).astype(np.float32)


def write_clips(folder: Path, fixture_input: np.ndarray | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """Float32 WAVs (exact samples) of every length plus a manifest; returns it and the waveforms by clip id."""
    folder.mkdir(parents=True, exist_ok=True)
    waves = {name: _noise(seconds, seed) for seed, (name, seconds) in enumerate(SECONDS.items())}
    if fixture_input is not None:
        waves["fixture"] = fixture_input.reshape(-1).astype(np.float32)
    rows = ["clip_id,path,labels,split"]
    for index, (name, wave) in enumerate(waves.items()):
        soundfile.write(folder / f"{name}.wav", wave, RATE, subtype="FLOAT")
        rows.append(f"{name},{name}.wav,{'a' if index % 2 else 'b'},train")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, waves


def run_extract(manifest: Path, out: Path, encoder: str, *extra: str) -> TokenStore:
    """`embedcache extract` as a user runs it (default clip policy), every clip in one batch, float32 tokens."""
    args = ["extract", "--encoder", encoder, "--manifest", str(manifest), "--out", str(out), "--dtype", "float32",
            "--workers", "0", "--no-progress", "--batch-size", "8", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return TokenStore.open(out)


def stored_row(store: TokenStore, clip_id: str, layer: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    row = int(np.flatnonzero(store.clip_ids == clip_id)[0])
    tokens = store.read_tokens(layer, row, row + 1)[0]
    prefix = store.read_prefix(layer, row, row + 1)
    return tokens, None if prefix is None else prefix[0], int(store.valid_tokens[row])


def assert_row_equals(store: TokenStore, clip_id: str, layer: int, tokens: torch.Tensor,
                      prefix: torch.Tensor | None = None) -> None:
    """The stored row holds exactly the reference's tokens [T, D] (then zeros) and prefix [P, D].

    Prints the largest difference (`pytest tests/test_clip_lengths.py -s` shows them all).
    """
    got, got_prefix, valid = stored_row(store, clip_id, layer)
    assert valid == tokens.shape[0], f"{clip_id}: {valid} valid tokens, the reference has {tokens.shape[0]}"
    error = float((got[:valid] - tokens.float()).abs().max())
    seconds = float(store.num_samples[np.flatnonzero(store.clip_ids == clip_id)[0]]) / RATE
    print(f"{Path(store.path).stem:>10} layer {layer} {clip_id:>8} ({seconds:6.2f} s): {valid:5d} tokens, "
          f"max |stored - reference| = {error:.1e}")
    torch.testing.assert_close(got[:valid], tokens.float(), atol=ATOL, rtol=RTOL, msg=lambda m: f"{clip_id}: {m}")
    assert not got[valid:].any(), f"{clip_id}: padding tokens are not zero"
    if prefix is not None:
        torch.testing.assert_close(got_prefix, prefix.float(), atol=ATOL, rtol=RTOL,
                                   msg=lambda m: f"{clip_id} prefix: {m}")


# ----------------------------------------------------------------- official preprocessing, step by step


def audioset_fbank(wave: np.ndarray, mean: float, std: float, target: int = 1024) -> torch.Tensor:
    """AST/AudioMAE/EAT dataloaders: waveform - mean, kaldi fbank (hanning, htk_compat), ZeroPad2d/crop to
    `target` frames in the log domain, then (x - mean) / (2 std)."""
    w = torch.from_numpy(wave)[None]
    fbank = kaldi.fbank(w - w.mean(), htk_compat=True, sample_frequency=RATE, use_energy=False,
                        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    fbank = F.pad(fbank, (0, 0, 0, max(0, target - fbank.shape[0])))[:target]
    return (fbank - mean) / (std * 2)


def beats_fbank(wave: np.ndarray) -> torch.Tensor:
    """BEATs.preprocess: waveform x 2^15, kaldi fbank with its defaults (povey), no padding, fixed normalisation."""
    fbank = kaldi.fbank(torch.from_numpy(wave)[None] * 2**15, num_mel_bins=128, sample_frequency=RATE,
                        frame_length=25, frame_shift=10)
    return (fbank - 15.41663) / (2 * 6.55582)


def real_time_steps(frames: int, kernel: int, stride: int) -> int:
    """Patch time steps that start inside a clip's real frames (a fixed-length model's valid tokens)."""
    return min(-(-frames // stride), (1024 - kernel) // stride + 1)


# ----------------------------------------------------------------- families with official fixtures


@pytest.fixture
def clips(tmp_path, encoder_fixtures):
    fixture_input = np.load(encoder_fixtures / "beats" / "input.npy")  # the same waveform in every folder
    return write_clips(tmp_path / "clips", fixture_input)


def test_beats_every_length_in_one_batch_equals_the_clip_alone(clips, encoder_fixtures, tmp_path):
    manifest, waves = clips
    checkpoint = encoder_fixtures / "beats" / "beats_tiny.pt"
    store = run_extract(manifest, tmp_path / "beats.zarr", "beats", "--checkpoint", str(checkpoint), "--layers",
                        "all")
    expected = np.load(encoder_fixtures / "beats" / "expected_tokens.npy")[0]
    assert_row_equals(store, "fixture", 1, torch.from_numpy(expected))
    encoder = create("beats", checkpoint=str(checkpoint))
    for name, wave in waves.items():
        with torch.no_grad():
            reference, grid = encoder.model(beats_fbank(wave)[None], [0, 1])
        assert grid == encoder.token_grid(len(wave))
        for layer in (0, 1):
            assert_row_equals(store, name, layer, reference[layer][0])
    # Rows are as long as the longest clip: 12.5 s -> 1248 frames -> 78 x 8; nothing was cropped.
    assert store.grid == (78, 8) and not store.lost_samples.any()


def test_dasheng_every_length_in_one_batch_equals_the_clip_alone(clips, encoder_fixtures, tmp_path):
    manifest, waves = clips
    checkpoint = encoder_fixtures / "dasheng" / "dasheng_tiny.pt"
    store = run_extract(manifest, tmp_path / "dasheng.zarr", "dasheng", "--checkpoint", str(checkpoint))
    expected = np.load(encoder_fixtures / "dasheng" / "expected_tokens.npy")[0]
    assert_row_equals(store, "fixture", 1, torch.from_numpy(expected))
    encoder = create("dasheng", checkpoint=str(checkpoint))
    to_db = torchaudio.transforms.AmplitudeToDB(top_db=120)
    for name, wave in waves.items():
        with torch.no_grad():  # the official front end on the clip alone (a 3-D batch of one), then BatchNorm
            mel_db = to_db(encoder.frontend.mel(torch.from_numpy(wave)[None]))  # [1, 64, frames]
            spec = encoder.model.normalise(mel_db.transpose(1, 2))
            tokens, _ = encoder.model(spec, [1])
        assert_row_equals(store, name, 1, tokens[1][0])
    # 12.5 s -> 1251 frames -> 312 patches: a chunk of 252 and one of 60, run independently.
    assert store.grid == (312, 1)


def test_dasheng_chunked_checkpoint_matches_its_official_chunked_tokens(clips, encoder_fixtures, tmp_path):
    manifest, _ = clips
    checkpoint = encoder_fixtures / "dasheng" / "dasheng_tiny_chunk128.pt"
    store = run_extract(manifest, tmp_path / "chunked.zarr", "dasheng", "--checkpoint", str(checkpoint))
    expected = np.load(encoder_fixtures / "dasheng" / "expected_tokens_chunk128.npy")[0]
    assert_row_equals(store, "fixture", 1, torch.from_numpy(expected))


@pytest.mark.parametrize("family, folder, file", [("ast", "ast", "ast_tiny.pth"),
                                                  ("audiomae", "audiomae", "audiomae_tiny.pth")])
def test_fixed_length_families_pad_and_crop_the_fbank_like_the_official_dataloader(
    clips, encoder_fixtures, tmp_path, family, folder, file
):
    manifest, waves = clips
    checkpoint = encoder_fixtures / folder / file
    store = run_extract(manifest, tmp_path / f"{family}.zarr", family, "--checkpoint", str(checkpoint),
                        "--encoder-option", "num_heads=4")
    encoder = create(family, checkpoint=str(checkpoint), num_heads=4)
    expected = torch.from_numpy(np.load(encoder_fixtures / folder / "expected_tokens.npy"))  # [1, P + N, 64]
    num_prefix = encoder.num_prefix
    n_time, n_freq = encoder.token_grid(RATE)
    stride = encoder.spec.stride[0]
    fixture_steps = real_time_steps(298, 16, stride)  # 3 s -> 298 real fbank frames
    patches = encoder.model.to_time_major(expected[:, num_prefix:], (n_time, n_freq))[0]
    assert_row_equals(store, "fixture", 1, patches[: fixture_steps * n_freq], expected[0, :num_prefix])
    for name, wave in waves.items():
        with torch.no_grad():
            outputs, grid = encoder.model(audioset_fbank(wave, -4.2677393, 4.5689974)[None], [1])
        tokens = encoder.model.to_time_major(outputs[1][:, num_prefix:], grid)[0]
        frames = 1 + (len(wave) - 400) // 160
        steps = real_time_steps(frames, 16, stride)
        assert_row_equals(store, name, 1, tokens[: steps * n_freq], outputs[1][0, :num_prefix])
    # Only the 12.5 s clip is longer than the 1024-frame input (10.255 s): it is cropped, and says so.
    lost = dict(zip(store.clip_ids.tolist(), (store.lost_samples / RATE).tolist(), strict=True))
    assert lost["long"] == pytest.approx(12.5 - (400 + 1023 * 160) / RATE) and lost["native"] == 0.0
    assert sum(value > 0 for value in lost.values()) == 1


def test_a_crop_shorter_than_the_input_marks_only_its_patches_valid(clips, encoder_fixtures, tmp_path):
    manifest, waves = clips
    checkpoint = encoder_fixtures / "ast" / "ast_tiny.pth"
    store = run_extract(manifest, tmp_path / "ast2.zarr", "ast", "--checkpoint", str(checkpoint),
                        "--encoder-option", "num_heads=4", "--max-seconds", "2")
    encoder = create("ast", checkpoint=str(checkpoint), num_heads=4)
    # 2 s -> 198 real frames -> AST time patches starting at frames 0, 10, ..., 190: 20 of 101.
    for name in ("odd", "native", "long"):
        _, _, valid = stored_row(store, name, 1)
        assert valid == 20 * 12
        with torch.no_grad():
            outputs, grid = encoder.model(audioset_fbank(waves[name][: 2 * RATE], -4.2677393, 4.5689974)[None], [1])
        tokens = encoder.model.to_time_major(outputs[1][:, 2:], grid)[0]
        assert_row_equals(store, name, 1, tokens[:valid], outputs[1][0, :2])
    assert int((store.lost_samples > 0).sum()) == 4  # every clip longer than 2 s, the 0.5 s one is whole


# ----------------------------------------------------------------- families with synthetic official layouts


def test_eat_and_sslam_every_length_equals_the_reference_forward(tmp_path):
    from test_encoders_vitfamily import EAT_HEADS, _eat_official_state, _eat_reference

    manifest, waves = write_clips(tmp_path / "clips")
    path = tmp_path / "eat.pt"
    torch.save({"model": _eat_official_state(seed=5)}, path)
    for family in ("eat", "sslam"):
        store = run_extract(manifest, tmp_path / f"{family}.zarr", family, "--checkpoint", str(path),
                            "--encoder-option", f"num_heads={EAT_HEADS}", "--layers", "all")
        for name, wave in waves.items():
            with torch.no_grad():
                reference = _eat_reference(_eat_official_state(seed=5), torch.from_numpy(wave)[None], 1024)
            steps = real_time_steps(1 + (len(wave) - 400) // 160, 16, 16)
            for layer in (0, 1):
                assert_row_equals(store, name, layer, reference[layer][0, 1 : 1 + steps * 8],
                                  reference[layer][0, :1])


def test_atst_frame_every_length_equals_the_reference_forward(tmp_path, lightning_attribute_dict):
    from test_encoders_vitfamily import ATST_HEADS, _atst_encoder_state, _atst_reference, _save_atst

    manifest, waves = write_clips(tmp_path / "clips")
    state = _atst_encoder_state(seed=11)
    path = tmp_path / "atst.ckpt"
    _save_atst(path, state, lightning_attribute_dict)
    store = run_extract(manifest, tmp_path / "atst.zarr", "atst_frame", "--checkpoint", str(path),
                        "--encoder-option", f"num_heads={ATST_HEADS}", "--layers", "all")
    for name, wave in waves.items():
        with torch.no_grad():
            reference = _atst_reference(state, torch.from_numpy(wave)[None])
        for layer in (0, 1):
            assert_row_equals(store, name, layer, reference[layer][0])
    # 12.5 s -> 1251 frames: a 1001-frame chunk (250 tokens) and a 250-frame one (62 tokens).
    assert store.grid == (312, 1)


def whisper_log_mel(audio: np.ndarray) -> torch.Tensor:
    """whisper.log_mel_spectrogram(audio, padding=N_SAMPLES) written out: 30 s of zeros appended, STFT (last frame
    dropped), Slaney mel, log10, floor at the clip's max - 8, (x + 4) / 4; all frames, for seeking 30 s windows."""
    padded = F.pad(torch.from_numpy(audio), (0, 30 * RATE))
    stft = torch.stft(padded, 400, 160, window=torch.hann_window(400), return_complex=True)
    filters = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 80, RATE, norm="slaney", mel_scale="slaney").T
    log_spec = torch.clamp(filters @ stft[..., :-1].abs() ** 2, min=1e-10).log10()
    return (torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


def test_whisper_every_length_equals_the_official_pad_or_trim_forward(tmp_path):
    from test_whisper import openai_checkpoint, reference_encoder

    manifest, waves = write_clips(tmp_path / "clips")
    waves["minute"] = _noise(61.0, seed=9)  # three 30 s windows
    soundfile.write(tmp_path / "clips" / "minute.wav", waves["minute"], RATE, subtype="FLOAT")
    with open(manifest, "a") as handle:
        handle.write("minute,minute.wav,a,train\n")
    dims = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 2}
    state = openai_checkpoint(tmp_path / "tiny.pt", dims)
    store = run_extract(manifest, tmp_path / "whisper.zarr", "whisper", "--checkpoint", str(tmp_path / "tiny.pt"),
                        "--max-seconds", "61")
    for name, wave in waves.items():
        # transcribe(): one log-mel of the clip and its zero padding, cut into 3000-frame windows, each encoded.
        mel = whisper_log_mel(wave)
        windows = -(-len(wave) // (30 * RATE))
        with torch.no_grad():
            tokens = torch.cat([reference_encoder(mel[None, :, 3000 * k : 3000 * (k + 1)], state, 2, 2)[-1][0]
                                for k in range(windows)])
        assert_row_equals(store, name, 1, tokens[: -(-len(wave) // 320)])


# ----------------------------------------------------------------- batches and policies


def test_a_clips_tokens_do_not_depend_on_its_batch(clips, encoder_fixtures, tmp_path):
    manifest, _ = clips
    checkpoint = str(encoder_fixtures / "beats" / "beats_tiny.pt")
    batched = run_extract(manifest, tmp_path / "b8.zarr", "beats", "--checkpoint", checkpoint)
    alone = run_extract(manifest, tmp_path / "b1.zarr", "beats", "--checkpoint", checkpoint, "--batch-size", "1",
                        "--chunk-clips", "1")
    np.testing.assert_array_equal(batched.valid_tokens, alone.valid_tokens)
    torch.testing.assert_close(batched.read_tokens(1, 0, 5), alone.read_tokens(1, 0, 5), atol=1e-5, rtol=1e-5)


def test_clips_too_short_for_the_encoder_are_bad_rows(tmp_path):
    folder = tmp_path / "short"
    folder.mkdir()
    soundfile.write(folder / "tiny.wav", _noise(0.1, 1), RATE, subtype="FLOAT")
    soundfile.write(folder / "fine.wav", _noise(1.0, 2), RATE, subtype="FLOAT")
    (folder / "m.csv").write_text("clip_id,path,labels,split\ntiny,tiny.wav,a,train\nfine,fine.wav,a,train\n")
    args = ["extract", "--encoder", "beats", "--random-init", "--manifest", str(folder / "m.csv"), "--workers", "0",
            "--no-progress", "--out"]
    refused = CliRunner().invoke(main, [*args, str(tmp_path / "a.zarr")])
    assert refused.exit_code == 1
    assert "tiny: too short for beats (0.100 s; it needs at least 0.175 s for one token)" in refused.output
    assert not (tmp_path / "a.zarr").exists()
    skipped = CliRunner().invoke(main, [*args, str(tmp_path / "b.zarr"), "--skip-bad"])
    assert skipped.exit_code == 0, skipped.output
    store = TokenStore.open(tmp_path / "b.zarr")
    assert store.clip_ids.tolist() == ["fine"] and store.skipped[0]["clip_id"] == "tiny"


def test_long_clips_are_cropped_at_max_seconds_counted_and_listed(tmp_path):
    manifest, _ = write_clips(tmp_path / "clips")
    out = tmp_path / "m.zarr"
    result = CliRunner().invoke(main, ["extract", "--encoder", "melpatch", "--manifest", str(manifest), "--out",
                                       str(out), "--workers", "0", "--max-seconds", "5"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert "2 clip(s) CROPPED to 5.00 s, 12.5 s of audio lost" in last  # 10 s and 12.5 s clips: 5 + 7.5 s
    assert "2 clip(s) are longer than 5.00 s and will be cropped, losing 12.5 s" in result.output
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "2 cropped, 12.5 s of audio lost" in info.output
    assert "  cropped   long: 12.50 s, lost 7.50 s" in info.output
    store = TokenStore.open(out)
    assert store.grid == (31, 4)  # 5 s rows
    # Default for an any-length encoder: rows as long as the longest clip (12.5 s), nothing cropped.
    default = CliRunner().invoke(main, ["extract", "--encoder", "melpatch", "--manifest", str(manifest), "--out",
                                        str(tmp_path / "d.zarr"), "--workers", "0", "--no-progress"])
    assert default.exit_code == 0 and default.output.strip().endswith("nothing cropped")
    assert TokenStore.open(tmp_path / "d.zarr").grid == (78, 4)
