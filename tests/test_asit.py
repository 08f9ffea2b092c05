"""ASiT from its official checkpoint layout (main_ASiT.py: `teacher` / DDP `student`) against a reference forward
re-typed step by step from the official data_transformations.py and vision_transformer.py, per layer and through
`embedcache extract` for clips shorter than, equal to and longer than its 592-frame (5.935 s) input."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from test_clip_lengths import run_extract, stored_row
from torchaudio.compliance import kaldi

from embedcache.encoders import create
from embedcache.encoders.vit_checkpoints import guess_family, remap_asit
from embedcache.errors import ConfigError

ATOL = RTOL = 1e-4
RATE = 32000  # data_transformations.SAMPLE_RATE
DIM, DEPTH, HEADS, MLP = 32, 2, 2, 128
FRAMES = 592  # main_ASiT.py --num_frames
HEAD_KEYS = {
    "head_cls.mlp.0.weight": (64, DIM), "head_cls.mlp.0.bias": (64,), "head_cls.mlp.4.weight": (16, 64),
    "head_cls.cls_layer.weight_g": (48, 1), "head_cls.cls_layer.weight_v": (48, 16),
    "head_cls.data_layer.weight_g": (24, 1), "head_cls.data_layer.weight_v": (24, 16),
    "head_recons.mlp.0.weight": (DIM, DIM), "head_recons.convTrans.weight": (8, 1, 16, 16),
    "head_recons.convTrans.bias": (1,),
}  # fmt: skip


# ----------------------------------------------------------------- a tiny checkpoint in the official layout


def backbone_state(seed: int, time_patches: int = FRAMES // 16) -> dict[str, torch.Tensor]:
    """vision_transformer.VisionTransformer's state dict (no head: num_classes=0), random and perturbed."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    state = {
        "cls_token": r(1, 1, DIM, scale=1.0),
        "pos_embed": r(1, 1 + time_patches * 8, DIM, scale=0.5),
        "patch_embed.proj.weight": r(DIM, 1, 16, 16, scale=0.05),
        "patch_embed.proj.bias": r(DIM),
        "norm.weight": 1 + r(DIM),
        "norm.bias": r(DIM),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": 1 + r(DIM), b + "norm1.bias": r(DIM),
            b + "attn.qkv.weight": r(3 * DIM, DIM), b + "attn.qkv.bias": r(3 * DIM),
            b + "attn.proj.weight": r(DIM, DIM), b + "attn.proj.bias": r(DIM),
            b + "norm2.weight": 1 + r(DIM), b + "norm2.bias": r(DIM),
            b + "mlp.fc1.weight": r(MLP, DIM), b + "mlp.fc1.bias": r(MLP),
            b + "mlp.fc2.weight": r(DIM, MLP), b + "mlp.fc2.bias": r(DIM),
        })  # fmt: skip
    return state


def pipeline_state(backbone: dict, prefix: str) -> dict[str, torch.Tensor]:
    """main_ASiT.FullPipeline's state dict: `backbone.*` plus the two pre-training heads, under `prefix`."""
    heads = {key: torch.full(shape, 0.5) for key, shape in HEAD_KEYS.items()}
    return {prefix + key: value for key, value in ({"backbone." + k: v for k, v in backbone.items()} | heads).items()}


def save_asit(path: Path, teacher: dict | None, student: dict | None, num_frames: int | None = FRAMES) -> Path:
    """A checkpoint as main_ASiT.py saves it: teacher unwrapped, student under DistributedDataParallel."""
    checkpoint = {"optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]}, "epoch": 100,
                  "loss_cls": {"center": torch.zeros(1, 48)}, "loss_data": {"center": torch.zeros(1, 24)}}
    if num_frames is not None:
        checkpoint["args"] = argparse.Namespace(arch="vit_base", num_frames=num_frames, num_mel_bins=128,
                                                data_mean=-4.2677393, data_std=4.5689974)
    if teacher is not None:
        checkpoint["teacher"] = pipeline_state(teacher, "")
    if student is not None:
        checkpoint["student"] = pipeline_state(student, "module.")
    torch.save(checkpoint, path)
    return path


# ----------------------------------------------------------------- the official pipeline, re-typed


def reference_fbank(wave: torch.Tensor, frames: int = FRAMES) -> torch.Tensor:
    """DataAugmentation._wav2fbank + normalisation: waveform - mean, kaldi fbank at 32 kHz (hanning, htk_compat,
    128 bins), ZeroPad2d or cut to `frames`, (x - data_mean) / (data_std * 2). wave [S] -> [frames, 128]."""
    w = wave[None] - wave.mean()
    fbank = kaldi.fbank(w, htk_compat=True, sample_frequency=RATE, use_energy=False, window_type="hanning",
                        num_mel_bins=128, dither=0.0, frame_shift=10)
    missing = frames - fbank.shape[0]
    if missing > 0:
        fbank = torch.nn.ZeroPad2d((0, 0, 0, missing))(fbank)
    elif missing < 0:
        fbank = fbank[:frames]
    return (fbank - (-4.2677393)) / (4.5689974 * 2)


def _ln(x, s, name):
    return F.layer_norm(x, x.shape[-1:], s[name + ".weight"], s[name + ".bias"], eps=1e-6)


def reference_forward(s: dict, wave: torch.Tensor, frames: int = FRAMES) -> list[torch.Tensor]:
    """VisionTransformer.forward on `wave` [S]: each block's output [1, 1 + N, D], the last one after `norm`."""
    x = F.conv2d(reference_fbank(wave, frames)[None, None], s["patch_embed.proj.weight"],
                 s["patch_embed.proj.bias"], stride=16)  # [1, D, T', F']
    x = x.flatten(2).transpose(1, 2)  # time-major patches
    x = torch.cat([s["cls_token"], x], dim=1) + s["pos_embed"]
    outputs = []
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = _ln(x, s, b + "norm1")
        qkv = F.linear(h, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"])
        qkv = qkv.reshape(1, x.shape[1], 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(1, x.shape[1], DIM)
        x = x + F.linear(y, s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        h = F.gelu(F.linear(_ln(x, s, b + "norm2"), s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"]))
        x = x + F.linear(h, s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"])
        outputs.append(x)
    outputs[-1] = _ln(outputs[-1], s, "norm")
    return outputs


def noise(seconds: float, seed: int) -> np.ndarray:
    gen = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.1 * gen.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (300 + 700 * seed) * t)).astype(np.float32)


# ----------------------------------------------------------------- parity, per layer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_asit(tmp_path_factory.mktemp("asit") / "checkpoint.pth", backbone_state(1), backbone_state(2))


def assert_matches_reference(encoder, state: dict, wave: torch.Tensor) -> None:
    with torch.no_grad():
        out = encoder(wave[None], [0, 1])
    reference = reference_forward(state, wave)
    assert out.grid == (37, 8)
    for layer in (0, 1):
        error = float((out.layers[layer] - reference[layer][:, 1:]).abs().max())
        print(f"asit layer {layer}: max |embedcache - reference| = {error:.1e}")
        torch.testing.assert_close(out.layers[layer], reference[layer][:, 1:], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(out.prefix[layer], reference[layer][:, :1], atol=ATOL, rtol=RTOL)


def test_teacher_matches_the_reference_forward_every_layer_and_cls(checkpoint):
    encoder = create("asit", checkpoint=str(checkpoint), num_heads=HEADS)
    assert_matches_reference(encoder, backbone_state(1), torch.from_numpy(noise(3.0, 0)))
    assert encoder.sample_rate == RATE and encoder.num_prefix == 1 and encoder.num_layers == DEPTH
    frontend = encoder.frontend_config()
    assert (frontend["sample_rate"], frontend["target_frames"], frontend["window_type"]) == (RATE, FRAMES, "hanning")
    assert (frontend["mean"], frontend["std"], frontend["htk_compat"]) == (-4.2677393, 4.5689974, True)
    assert encoder.config()["architecture"]["pos_grid"] == [37, 8]


def test_a_student_only_file_loads_the_ddp_student(tmp_path):
    path = save_asit(tmp_path / "student.pth", None, backbone_state(2))
    encoder = create("asit", checkpoint=str(path), num_heads=HEADS)
    assert_matches_reference(encoder, backbone_state(2), torch.from_numpy(noise(2.0, 3)))


def test_remap_drops_both_heads_and_both_prefixes():
    backbone = backbone_state(4)
    for prefix in ("", "module."):
        canonical = remap_asit(pipeline_state(backbone, prefix))
        assert set(canonical) == set(backbone) and all(canonical[k] is backbone[k] for k in canonical)
    assert set(remap_asit(backbone)) == set(backbone)  # a bare backbone passes through
    assert guess_family(pipeline_state(backbone, "")) == guess_family(pipeline_state(backbone, "module.")) == "asit"


# ----------------------------------------------------------------- lengths and the position table


def test_grid_valid_tokens_and_the_crop(checkpoint):
    encoder = create("asit", checkpoint=str(checkpoint), num_heads=HEADS)
    limit = 800 + (FRAMES - 1) * 320  # 592 kaldi frames of 800 samples, hop 320
    assert encoder.max_input_samples() == limit and limit / RATE == pytest.approx(5.935)
    assert encoder.token_grid(10 * RATE) == (37, 8)
    assert encoder.valid_tokens(RATE // 2, RATE // 2) == 3 * 8  # 0.5 s -> 48 frames -> 3 time patches
    semantics = encoder.clip_semantics()
    assert semantics["length"] == "fixed" and semantics["input_frames"] == FRAMES
    assert "no recipe for longer inputs" in semantics["crop"] and "--window 5.93" in semantics["crop"]


def test_other_position_tables_and_target_frames(tmp_path):
    # A table for 64 time patches and no saved args: the input length is read from the table (1024 frames).
    path = save_asit(tmp_path / "long.pth", backbone_state(5, time_patches=64), None, num_frames=None)
    encoder = create("asit", checkpoint=str(path), num_heads=HEADS)
    assert encoder.target_frames == 1024 and encoder.token_grid(RATE) == (64, 8)
    short = create("asit", checkpoint=str(path), num_heads=HEADS, target_frames=FRAMES)  # the table's first rows
    with torch.no_grad():
        assert short(torch.from_numpy(noise(1.0, 1))[None], [1]).grid == (37, 8)
    with pytest.raises(ConfigError, match=r"target_frames=1040 gives 65 time patches .* covers 1..64"):
        create("asit", checkpoint=str(path), num_heads=HEADS, target_frames=1040)
    with pytest.raises(ConfigError, match="needs a fixed target_frames"):
        create("asit", checkpoint=str(path), num_heads=HEADS, target_frames=None)


def test_wrong_files_are_refused(tmp_path, encoder_fixtures):
    with pytest.raises(ConfigError, match="--encoder beats"):
        create("asit", checkpoint=str(encoder_fixtures / "beats" / "beats_tiny.pt"))
    with pytest.raises(ConfigError, match="--checkpoint"):
        create("asit")


# ----------------------------------------------------------------- through `embedcache extract`

SECONDS = {"short": 0.5, "odd": 3.217, "native": 5.92, "long": 8.0}


def test_every_length_in_one_batch_equals_the_reference_on_the_clip_alone(checkpoint, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    waves = {name: noise(seconds, seed) for seed, (name, seconds) in enumerate(SECONDS.items())}
    rows = ["clip_id,path,labels,split"]
    for name, wave in waves.items():
        soundfile.write(folder / f"{name}.wav", wave, RATE, subtype="FLOAT")  # at 32 kHz: no resampling
        rows.append(f"{name},{name}.wav,a,train")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    store = run_extract(folder / "manifest.csv", tmp_path / "asit.zarr", "asit", "--checkpoint", str(checkpoint),
                        "--encoder-option", f"num_heads={HEADS}", "--layers", "all")
    assert store.grid == (37, 8)
    state = backbone_state(1)
    for name, wave in waves.items():
        # The whole clip, as the official pipeline takes it (its fbank cut to 592 frames); extract crops the 8 s clip's
        # samples first, so only the waveform mean differs, which Kaldi's per-frame DC removal cancels (~3e-5).
        with torch.no_grad():
            reference = reference_forward(state, torch.from_numpy(wave))
        real_frames = min(1 + (len(wave) - 800) // 320, FRAMES)
        valid = -(-real_frames // 16) * 8
        for layer in (0, 1):
            tokens, prefix, stored_valid = stored_row(store, name, layer)
            assert stored_valid == valid, name
            error = float((tokens[:valid] - reference[layer][0, 1 : 1 + valid]).abs().max())
            print(f"asit extract layer {layer} {name:>7} ({len(wave) / RATE:5.2f} s): {valid:3d} tokens, "
                  f"max |stored - reference| = {error:.1e}")
            torch.testing.assert_close(tokens[:valid], reference[layer][0, 1 : 1 + valid], atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(prefix, reference[layer][0, :1], atol=ATOL, rtol=RTOL)
            assert not tokens[valid:].any()
    # Only the 8 s clip is longer than the 592-frame input (5.935 s): it is cropped, and the store says by how much.
    lost = dict(zip(store.clip_ids.tolist(), store.lost_samples.tolist(), strict=True))
    assert lost == {"short": 0, "odd": 0, "native": 0, "long": 8 * RATE - (800 + (FRAMES - 1) * 320)}
