"""ViT families from official checkpoints: fixture parity (AudioMAE, AST), synthetic official-layout files
(EAT/SSLAM, ATST-Frame) against independent reference forwards, key remaps, grids and refusals."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio
from torchaudio.compliance import kaldi

from embedcache.encoders import create
from embedcache.encoders.vit import sincos_2d
from embedcache.encoders.vit_checkpoints import (
    guess_family,
    remap_ast,
    remap_atst_frame,
    remap_audiomae,
    remap_eat,
)
from embedcache.errors import ConfigError

ATOL = RTOL = 1e-4


def _fixture(encoder_fixtures, folder, name):
    return np.load(encoder_fixtures / folder / name)


def _wave(seconds: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    return (0.1 * torch.randn(t.shape, generator=gen) + 0.3 * torch.sin(2 * torch.pi * 440 * t))[None]


def _freq_major_to_time_major(tokens: np.ndarray, n_time: int, n_freq: int) -> np.ndarray:
    batch, _, dim = tokens.shape
    return tokens.reshape(batch, n_freq, n_time, dim).transpose(0, 2, 1, 3).reshape(batch, n_time * n_freq, dim)


# ---------------------------------------------------------------- AudioMAE fixture


def test_audiomae_fixture_parity_frontend_every_layer_and_tokens(encoder_fixtures):
    path = encoder_fixtures / "audiomae" / "audiomae_tiny.pth"
    wave = torch.from_numpy(_fixture(encoder_fixtures, "audiomae", "input.npy"))
    layers = _fixture(encoder_fixtures, "audiomae", "expected_layers.npy")  # [2, 1, 513, 64] pre final norm
    tokens = _fixture(encoder_fixtures, "audiomae", "expected_tokens.npy")  # [1, 513, 64] after norm
    raw = create("audiomae", checkpoint=str(path), num_heads=4, final_norm_layers="none")
    encoder = create("audiomae", checkpoint=str(path), num_heads=4)
    features = encoder.frontend(wave).numpy()
    np.testing.assert_allclose(features, _fixture(encoder_fixtures, "ast", "expected_fbank.npy"), atol=ATOL, rtol=0)
    with torch.no_grad():
        per_layer = raw(wave, [0, 1])
        out = encoder(wave, [-1])
    assert per_layer.grid == out.grid == (64, 8)
    for index in (0, 1):
        np.testing.assert_allclose(per_layer.layers[index].numpy(), layers[index][:, 1:], atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(per_layer.prefix[index].numpy(), layers[index][:, :1], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(out.layers[1].numpy(), tokens[:, 1:], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(out.prefix[1].numpy(), tokens[:, :1], atol=ATOL, rtol=RTOL)


def test_audiomae_stored_table_is_sincos_on_the_8_by_64_grid(encoder_fixtures):
    encoder = create("audiomae", checkpoint=str(encoder_fixtures / "audiomae" / "audiomae_tiny.pth"), num_heads=4)
    stored = encoder.model.pos_embed[0]
    assert torch.equal(stored[0], torch.zeros(64))
    torch.testing.assert_close(stored[1:], sincos_2d(64, 8, 64), atol=1e-6, rtol=0)
    # The (time=64, freq=8) reading of the same function is a different table.
    assert (stored[1:] - sincos_2d(64, 64, 8)).abs().max() > 1.0


def test_audiomae_config_records_checkpoint_and_frontend(encoder_fixtures):
    path = encoder_fixtures / "audiomae" / "audiomae_tiny.pth"
    encoder = create("audiomae", checkpoint=str(path), num_heads=4)
    config = encoder.config()
    assert config["random_init"] is False
    assert config["checkpoint_sha256"].startswith("5dd3086621c6")
    assert config["architecture"]["prefix"] == ["cls"] and config["architecture"]["input_layout"] == "time_first"
    frontend = encoder.frontend_config()
    assert frontend["window_type"] == "hanning" and frontend["target_frames"] == 1024
    assert frontend["mean"] == -4.2677393 and frontend["std"] == 4.5689974
    assert encoder.token_grid(160000) == (64, 8)
    # 3 s of real audio = 298 frames -> time patches 0..18 start inside it.
    assert encoder.valid_tokens(48000, 160000) == 19 * 8


# ---------------------------------------------------------------- AST fixture


def test_ast_fixture_parity_every_layer_tokens_and_order(encoder_fixtures):
    path = encoder_fixtures / "ast" / "ast_tiny.pth"
    wave = torch.from_numpy(_fixture(encoder_fixtures, "ast", "input.npy"))
    layers = _fixture(encoder_fixtures, "ast", "expected_layers.npy")  # [2, 1, 1214, 64], freq-major patches
    tokens = _fixture(encoder_fixtures, "ast", "expected_tokens.npy")
    raw = create("ast", checkpoint=str(path), num_heads=4, final_norm_layers="none")
    encoder = create("ast", checkpoint=str(path), num_heads=4)
    with torch.no_grad():
        per_layer = raw(wave, [0, 1])
        out = encoder(wave, [1])
    assert out.grid == (101, 12)
    for index in (0, 1):
        expected = _freq_major_to_time_major(layers[index][:, 2:], 101, 12)
        np.testing.assert_allclose(per_layer.layers[index].numpy(), expected, atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(per_layer.prefix[index].numpy(), layers[index][:, :2], atol=ATOL, rtol=RTOL)
    expected = _freq_major_to_time_major(tokens[:, 2:], 101, 12)
    np.testing.assert_allclose(out.layers[1].numpy(), expected, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(out.prefix[1].numpy(), tokens[:, :2], atol=ATOL, rtol=RTOL)
    # Not a no-op: the official (frequency-major) order differs from the stored one.
    assert np.abs(out.layers[1].numpy() - tokens[:, 2:]).max() > 0.1


def test_ast_rejects_strides_that_do_not_match_its_position_table(encoder_fixtures):
    with pytest.raises(ConfigError, match="fstride=16, tstride=16"):
        create("ast", checkpoint=str(encoder_fixtures / "ast" / "ast_tiny.pth"), fstride=16, tstride=16)


# ---------------------------------------------------------------- EAT / SSLAM (synthetic official layout)

EAT_DIM, EAT_DEPTH, EAT_HEADS, EAT_MLP = 32, 2, 2, 64


def _mae_sincos(dim: int, height: int, width: int) -> np.ndarray:
    """Transcription of the MAE table recipe (meshgrid w first; half of the dims per axis), independent of
    embedcache's version."""
    grid_w, grid_h = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, grid_w), one_d(dim // 2, grid_h)], axis=1).astype(np.float32)


def _eat_official_state(seed: int, table_rows: int = 768) -> dict:
    """A tiny EAT pre-training state dict in the fairseq key layout, with parts a loader must drop."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    image = "modality_encoders.IMAGE."
    state = {
        image + "local_encoder.proj.weight": r(EAT_DIM, 1, 16, 16, scale=0.05),
        image + "local_encoder.proj.bias": r(EAT_DIM),
        image + "extra_tokens": r(1, 1, EAT_DIM, scale=1.0),
        image + "fixed_positional_encoder.positions": torch.from_numpy(_mae_sincos(EAT_DIM, table_rows, 8))[None],
        image + "context_encoder.norm.weight": 1 + r(EAT_DIM),
        image + "context_encoder.norm.bias": r(EAT_DIM),
        image + "decoder.blocks.0.0.weight": r(4, 4),
        "center": r(1, 1, EAT_DIM),
        "recon_proj.weight": r(EAT_DIM // 3, EAT_DIM),
        "_ema": {"blocks.0.norm1.weight": torch.ones(EAT_DIM)},
    }
    for i in range(EAT_DEPTH):
        block = f"blocks.{i}."
        state.update(
            {
                block + "norm1.weight": 1 + r(EAT_DIM),
                block + "norm1.bias": r(EAT_DIM),
                block + "attn.qkv.weight": r(3 * EAT_DIM, EAT_DIM),
                block + "attn.qkv.bias": r(3 * EAT_DIM),
                block + "attn.proj.weight": r(EAT_DIM, EAT_DIM),
                block + "attn.proj.bias": r(EAT_DIM),
                block + "norm2.weight": 1 + r(EAT_DIM),
                block + "norm2.bias": r(EAT_DIM),
                block + "mlp.fc1.weight": r(EAT_MLP, EAT_DIM),
                block + "mlp.fc1.bias": r(EAT_MLP),
                block + "mlp.fc2.weight": r(EAT_DIM, EAT_MLP),
                block + "mlp.fc2.bias": r(EAT_DIM),
            }
        )
    return state


def _attention(x, qkv_w, qkv_b, proj_w, proj_b, heads):
    batch, length, dim = x.shape
    qkv = F.linear(x, qkv_w, qkv_b).reshape(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return F.linear((weights @ v).transpose(1, 2).reshape(batch, length, dim), proj_w, proj_b)


def _mlp(x, s, block):
    return F.linear(F.gelu(F.linear(x, s[block + "mlp.fc1.weight"], s[block + "mlp.fc1.bias"])),
                    s[block + "mlp.fc2.weight"], s[block + "mlp.fc2.bias"])  # fmt: skip


def _ln(x, s, name, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], s[name + ".weight"], s[name + ".bias"], eps)


def _eat_reference(state: dict, wave: torch.Tensor, target_frames: int) -> list[torch.Tensor]:
    """EAT's official forward, re-typed from its feature_extract.py / base.py / AltBlock (post-LN)."""
    image = "modality_encoders.IMAGE."
    w = wave[0] - wave[0].mean()
    mel = kaldi.fbank(w[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)  # fmt: skip
    mel = F.pad(mel, (0, 0, 0, max(0, target_frames - mel.shape[0])))[:target_frames]
    mel = (mel - (-4.268)) / (4.569 * 2)
    x = F.conv2d(mel[None, None], state[image + "local_encoder.proj.weight"],
                 state[image + "local_encoder.proj.bias"], stride=16)  # fmt: skip
    x = x.flatten(2).transpose(1, 2)
    x = x + state[image + "fixed_positional_encoder.positions"][:, : x.shape[1]]
    x = torch.cat([state[image + "extra_tokens"], x], dim=1)
    x = _ln(x, state, image + "context_encoder.norm")
    outputs = []
    for i in range(EAT_DEPTH):
        b = f"blocks.{i}."
        x = x + _attention(x, state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"],
                           state[b + "attn.proj.weight"], state[b + "attn.proj.bias"], EAT_HEADS)  # fmt: skip
        x = _ln(x, state, b + "norm1")
        x = _ln(x + _mlp(x, state, b), state, b + "norm2")
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("family", ["eat", "sslam"])
@pytest.mark.parametrize("finetuned", [False, True])
def test_eat_and_sslam_match_an_independent_reference_forward(tmp_path, family, finetuned):
    official = _eat_official_state(seed=5)
    if finetuned:
        # MaeImageClassificationModel: backbone under `model.`, plus the classifier's fc_norm and head.
        official = {"model." + k: v for k, v in official.items() if k != "_ema"}
        official.update({"fc_norm.weight": torch.ones(EAT_DIM), "fc_norm.bias": torch.zeros(EAT_DIM),
                         "head.weight": torch.zeros(527, EAT_DIM), "head.bias": torch.zeros(527)})  # fmt: skip
    path = tmp_path / f"{family}.pt"
    torch.save({"model": official, "cfg": {"model": {"embed_dim": EAT_DIM}}, "optimizer_history": []}, path)
    encoder = create(family, checkpoint=str(path), num_heads=EAT_HEADS, target_frames=256)
    wave = _wave(3.0)
    with torch.no_grad():
        out = encoder(wave, [0, 1])
    reference = _eat_reference(_eat_official_state(seed=5), wave, 256)
    assert out.grid == (16, 8)
    for index in (0, 1):
        torch.testing.assert_close(out.layers[index], reference[index][:, 1:], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(out.prefix[index], reference[index][:, :1], atol=ATOL, rtol=RTOL)
    assert encoder.frontend_config()["mean"] == -4.268 and encoder.frontend_config()["std"] == 4.569
    assert encoder.config()["architecture"]["post_ln"] is True
    assert encoder.config()["architecture"]["prefix_pos"] is False


def test_eat_old_512_row_table_and_ten_second_grid(tmp_path):
    path = tmp_path / "eat_old.pt"
    torch.save({"model": _eat_official_state(seed=6, table_rows=64)}, path)
    encoder = create("eat", checkpoint=str(path), num_heads=EAT_HEADS)
    assert encoder.token_grid(160000) == (64, 8)
    assert encoder.model.pos_embed.shape == (1, 512, EAT_DIM)
    with pytest.raises(ConfigError, match="multiple of 16"):
        create("eat", checkpoint=str(path), target_frames=1000)
    with pytest.raises(ConfigError, match="does not fit"):
        create("eat", checkpoint=str(path), num_heads=EAT_HEADS, target_frames=1040)(_wave(1.0), [0])


def test_eat_remap_round_trip_and_dropped_keys():
    official = _eat_official_state(seed=7)
    canonical = remap_eat(official)
    assert "cls_token" in canonical and "pre_norm.weight" in canonical and "pos_embed" in canonical
    assert not any(k.startswith(("_ema", "center", "recon_proj", "modality_encoders")) for k in canonical)
    inverse = {
        "patch_embed.proj.": "modality_encoders.IMAGE.local_encoder.proj.",
        "cls_token": "modality_encoders.IMAGE.extra_tokens",
        "pos_embed": "modality_encoders.IMAGE.fixed_positional_encoder.positions",
        "pre_norm.": "modality_encoders.IMAGE.context_encoder.norm.",
    }
    back = {}
    for key, value in canonical.items():
        for new, old in inverse.items():
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        back[key] = value
    kept = {k: v for k, v in official.items() if k in back}
    assert set(back) == set(kept) and all(back[k] is kept[k] for k in back)
    # Fine-tuned files give the same canonical dict.
    finetuned = {"model." + k: v for k, v in official.items()} | {"head.weight": torch.zeros(2, EAT_DIM)}
    assert set(remap_eat(finetuned)) == set(canonical)


# ---------------------------------------------------------------- ATST-Frame (synthetic Lightning layout)

ATST_DIM, ATST_DEPTH, ATST_HEADS = 32, 2, 2


def _atst_encoder_state(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    state = {
        "patch_embed.patch_embed.weight": r(ATST_DIM, 256, scale=0.1),
        "patch_embed.patch_embed.bias": r(ATST_DIM),
        "mask_embed": r(1, 1, ATST_DIM),
        "pos_embed": r(1, 251, ATST_DIM, scale=0.5),
        "norm_frame.weight": 1 + r(ATST_DIM),
        "norm_frame.bias": r(ATST_DIM),
    }
    for i in range(ATST_DEPTH):
        b = f"blocks.{i}."
        state.update(
            {
                b + "norm1.weight": 1 + r(ATST_DIM),
                b + "norm1.bias": r(ATST_DIM),
                b + "attn.qkv.weight": r(3 * ATST_DIM, ATST_DIM),
                b + "attn.proj.weight": r(ATST_DIM, ATST_DIM),
                b + "attn.proj.bias": r(ATST_DIM),
                b + "norm2.weight": 1 + r(ATST_DIM),
                b + "norm2.bias": r(ATST_DIM),
                b + "mlp.fc1.weight": r(4 * ATST_DIM, ATST_DIM),
                b + "mlp.fc1.bias": r(4 * ATST_DIM),
                b + "mlp.fc2.weight": r(ATST_DIM, 4 * ATST_DIM),
                b + "mlp.fc2.bias": r(ATST_DIM),
            }
        )
    return state


def _atst_reference(state: dict, wave: torch.Tensor) -> list[torch.Tensor]:
    """ATST-Frame's official timestamp embedding per block (embedding.py + FrameAST), re-typed."""
    mel = torchaudio.transforms.MelSpectrogram(16000, f_min=60, f_max=7800, hop_length=160, win_length=1024,
                                               n_fft=1024, n_mels=64)(wave[:, None])  # fmt: skip
    db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80)(mel)  # [B, 1, 64, T]
    x_all = (db - (-79.6482)) / (50.6842 - (-79.6482)) * 2 - 1
    per_layer = [[] for _ in range(ATST_DEPTH)]
    total = x_all.shape[-1]
    for start in range(0, total, 1001):
        chunk = x_all[..., start : min(start + 1001, total)]
        width = chunk.shape[-1] - chunk.shape[-1] % 4
        if width == 0:
            continue
        # Rearrange('b c (h p1) (w p2) -> b (w h) (p1 p2 c)'), h = 1, c = 1.
        patches = chunk[..., :width].reshape(1, 64, width // 4, 4).permute(0, 2, 1, 3).reshape(1, width // 4, 256)
        x = F.linear(patches, state["patch_embed.patch_embed.weight"], state["patch_embed.patch_embed.bias"])
        x = x + state["pos_embed"][:, 1 : x.shape[1] + 1]
        for i in range(ATST_DEPTH):
            b = f"blocks.{i}."
            x = x + _attention(_ln(x, state, b + "norm1"), state[b + "attn.qkv.weight"], None,
                               state[b + "attn.proj.weight"], state[b + "attn.proj.bias"], ATST_HEADS)  # fmt: skip
            x = x + _mlp(_ln(x, state, b + "norm2"), state, b)
            per_layer[i].append(_ln(x, state, "norm_frame"))
    return [torch.cat(parts, dim=1) for parts in per_layer]


def _save_atst(path, encoder_state, attribute_dict=None):
    state_dict = {"model.teacher.encoder." + k: v for k, v in encoder_state.items()}
    state_dict.update({"model.student.encoder." + k: v + 1 for k, v in encoder_state.items()})
    state_dict["model.teacher.projector.weight"] = torch.zeros(4, 4)
    hyper = {"arch": "tiny", "lr": 5e-4}
    checkpoint = {
        "state_dict": state_dict,
        "hyper_parameters": attribute_dict(hyper) if attribute_dict else hyper,
        "pytorch-lightning_version": "1.9.0",
        "epoch": 3,
    }
    torch.save(checkpoint, path)


def test_atst_frame_matches_an_independent_reference_with_chunking(tmp_path, lightning_attribute_dict, monkeypatch):
    encoder_state = _atst_encoder_state(seed=11)
    path = tmp_path / "atst.ckpt"
    _save_atst(path, encoder_state, lightning_attribute_dict)
    for name in ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]:
        monkeypatch.delitem(sys.modules, name)  # loading must not need Lightning
    encoder = create("atst_frame", checkpoint=str(path), num_heads=ATST_HEADS)
    wave = _wave(12.0, seed=3)  # 1201 frames -> chunks of 1001 + 200 frames -> 250 + 50 tokens
    with torch.no_grad():
        out = encoder(wave, [0, 1])
    reference = _atst_reference(encoder_state, wave)
    assert out.grid == (300, 1) == encoder.token_grid(wave.shape[1])
    assert out.prefix == {}
    for index in (0, 1):
        torch.testing.assert_close(out.layers[index], reference[index], atol=ATOL, rtol=RTOL)
    assert encoder.token_grid(160000) == (250, 1)
    assert encoder.frontend_config()["kind"] == "mel-db"
    assert encoder.config()["architecture"]["qkv_bias"] is False


def test_atst_remap_linear_patch_to_conv_and_back():
    state = _atst_encoder_state(seed=12)
    canonical = remap_atst_frame({"model.teacher.encoder." + k: v for k, v in state.items()})
    assert "mask_embed" not in canonical and "norm.weight" in canonical
    conv = canonical["patch_embed.proj.weight"]
    assert conv.shape == (ATST_DIM, 1, 64, 4)
    torch.testing.assert_close(conv.reshape(ATST_DIM, 256), state["patch_embed.patch_embed.weight"])
    # Feature p1 * 4 + p2 of the linear patch is conv tap (freq p1, time p2).
    assert conv[3, 0, 10, 2] == state["patch_embed.patch_embed.weight"][3, 10 * 4 + 2]


# ---------------------------------------------------------------- remaps, hints and refusals


def test_audiomae_and_ast_remaps_drop_heads_and_decoders(encoder_fixtures):
    from embedcache.checkpoints import load_checkpoint

    audiomae = load_checkpoint(encoder_fixtures / "audiomae" / "audiomae_tiny.pth")["model"]
    canonical = remap_audiomae(audiomae)
    assert not any(k.startswith(("decoder_", "mask_token")) for k in canonical)
    assert len(canonical) == len(audiomae) - sum(k.startswith(("decoder_", "mask_token")) for k in audiomae)
    ast = load_checkpoint(encoder_fixtures / "ast" / "ast_tiny.pth")
    canonical = remap_ast(ast)
    assert {"cls_token", "dist_token", "pos_embed", "norm.weight"} <= set(canonical)
    assert not any(k.startswith(("module.", "v.", "head", "mlp_head")) for k in canonical)
    assert all(canonical[k] is ast["module.v." + k] for k in canonical)


def test_guess_family_from_keys():
    assert guess_family(["encoder.layers.0.self_attn.grep_linear.weight"]) == "beats"
    assert guess_family(["front_end.0.mel_scale.fb"]) == "dasheng"
    assert guess_family(["module.v.patch_embed.proj.weight"]) == "ast"
    assert guess_family(["backbone.patch_embed.proj.weight", "head_cls.mlp.0.weight"]) == "asit"
    assert guess_family(["module.backbone.patch_embed.proj.weight"]) == "asit"
    assert guess_family(["blocks.0.norm1.weight"]) is None


@pytest.mark.parametrize(
    "family, folder, filename, hint",
    [
        ("audiomae", "beats", "beats_tiny.pt", "beats"),
        ("ast", "dasheng", "dasheng_tiny.pt", "dasheng"),
        ("eat", "audiomae", "audiomae_tiny.pth", "audiomae"),
        ("atst_frame", "ast", "ast_tiny.pth", "ast"),
        ("asit", "audiomae", "audiomae_tiny.pth", "audiomae"),
    ],
)
def test_wrong_family_checkpoint_is_refused_with_a_hint(encoder_fixtures, family, folder, filename, hint):
    with pytest.raises(ConfigError, match=rf"not a .* checkpoint .*--encoder {hint}"):
        create(family, checkpoint=str(encoder_fixtures / folder / filename))


def test_truncated_missing_and_absent_checkpoints_are_refused(encoder_fixtures, tmp_path):
    data = (encoder_fixtures / "audiomae" / "audiomae_tiny.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="truncated"):
        create("audiomae", checkpoint=str(truncated))
    with pytest.raises(ConfigError, match="no such file"):
        create("audiomae", checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="--checkpoint"):
        create("eat")
    with pytest.raises(ConfigError, match="exclude"):
        create("ast", checkpoint=str(truncated), random_init=True)


class UntrustedPayload:
    """A class no allow-list knows: unpickling it would run project-foreign code."""

    def __init__(self):
        self.value = 1


def test_unknown_pickled_types_are_refused_by_name(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "extra": UntrustedPayload()}, path)
    with pytest.raises(ConfigError, match="UntrustedPayload.*never runs arbitrary"):
        create("audiomae", checkpoint=str(path))


def test_unknown_and_missing_keys_are_named(tmp_path, encoder_fixtures):
    from embedcache.checkpoints import load_checkpoint

    state = dict(load_checkpoint(encoder_fixtures / "audiomae" / "audiomae_tiny.pth")["model"])
    state["blocks.0.attn.rel_bias"] = torch.zeros(3)
    del state["blocks.1.mlp.fc2.bias"]
    path = tmp_path / "edited.pth"
    torch.save({"model": state}, path)
    with pytest.raises(
        ConfigError, match=r"unknown keys \['blocks.0.attn.rel_bias'\].*missing keys \['blocks.1.mlp.fc2.bias'\]"
    ):
        create("audiomae", checkpoint=str(path), num_heads=4)
    with pytest.raises(ConfigError, match="unknown option"):
        create("audiomae", checkpoint=str(encoder_fixtures / "audiomae" / "audiomae_tiny.pth"), colour="red")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fixture_families_on_cuda_match_cpu(encoder_fixtures):
    wave = torch.from_numpy(_fixture(encoder_fixtures, "ast", "input.npy"))
    for family, path in [("audiomae", "audiomae/audiomae_tiny.pth"), ("ast", "ast/ast_tiny.pth")]:
        encoder = create(family, checkpoint=str(encoder_fixtures / path), num_heads=4)
        with torch.no_grad():
            cpu = encoder(wave, [1]).layers[1]
            gpu = encoder.cuda()(wave.cuda(), [1]).layers[1].cpu()
        torch.testing.assert_close(gpu, cpu, atol=ATOL, rtol=RTOL)
