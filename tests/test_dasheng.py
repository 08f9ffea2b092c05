"""Dasheng: parity with dasheng 0.0.9 (shared fixture), per-clip top_db, chunking, config reading, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedcache import encoders
from embedcache.encoders.dasheng import dasheng_config_from_checkpoint, dasheng_state_dicts
from embedcache.errors import ConfigError

TINY = dict(embed_dim=32, depth=2, num_heads=4, mlp_hidden=64)


@pytest.fixture
def dasheng_fixture(encoder_fixtures):
    folder = encoder_fixtures / "dasheng"
    wave = torch.from_numpy(np.load(folder / "input.npy"))
    return folder, wave, encoders.create("dasheng", checkpoint=str(folder / "dasheng_tiny.pt"))


def official_layout(encoder) -> dict:
    """Our weights in the official state-dict layout (front-end buffers, init_bn.1.*)."""
    state = {
        "front_end.0.spectrogram.window": encoder.frontend.mel.spectrogram.window.clone(),
        "front_end.0.mel_scale.fb": encoder.frontend.mel.mel_scale.fb.clone(),
    }
    for key, value in encoder.model.state_dict().items():
        key = key.replace("init_bn.", "init_bn.1.", 1) if key.startswith("init_bn.") else key
        state[key] = value.clone()
    return state


def test_mel_db_and_batchnorm_spectrogram_match_official(dasheng_fixture):
    folder, wave, encoder = dasheng_fixture
    mel_db = encoder.frontend(wave)  # [B, frames, mels]
    np.testing.assert_allclose(mel_db.transpose(1, 2).numpy(), np.load(folder / "expected_mel_db.npy"), atol=1e-3)
    spec = encoder.model.normalise(mel_db)
    np.testing.assert_allclose(spec.detach().numpy(), np.load(folder / "expected_fbank.npy"), atol=1e-4, rtol=1e-4)


def test_every_layer_and_tokens_match_official(dasheng_fixture):
    folder, wave, encoder = dasheng_fixture
    with torch.no_grad():
        out = encoder(wave, [0, 1])
    assert out.grid == (75, 1) == encoder.token_grid(wave.shape[-1])
    assert out.prefix == {}
    layers = np.load(folder / "expected_layers.npy")
    np.testing.assert_allclose(out.layers[0].numpy(), layers[0], atol=1e-4, rtol=1e-4)
    # The last layer is the official forward output, i.e. blocks[-1] followed by the final norm.
    np.testing.assert_allclose(out.layers[1].numpy(), np.load(folder / "expected_tokens.npy"), atol=1e-4, rtol=1e-4)
    normed = encoder.model.norm(torch.from_numpy(layers[1]))
    np.testing.assert_allclose(out.layers[1].numpy(), normed.detach().numpy(), atol=1e-5)


def test_chunked_tokens_match_official(encoder_fixtures):
    folder = encoder_fixtures / "dasheng"
    encoder = encoders.create("dasheng", checkpoint=str(folder / "dasheng_tiny_chunk128.pt"))
    assert encoder.cfg.target_length == 128
    assert encoder.model.chunk_sizes(75) == [32, 32, 11]
    with torch.no_grad():
        out = encoder(torch.from_numpy(np.load(folder / "input.npy")), [-1])
    expected = np.load(folder / "expected_tokens_chunk128.npy")
    np.testing.assert_allclose(out.layers[1].numpy(), expected, atol=1e-4, rtol=1e-4)


def test_checkpoint_provenance_and_frontend(dasheng_fixture):
    _, _, encoder = dasheng_fixture
    config = encoder.config()
    assert config["checkpoint_sha256"] == "f4c4e0f7b252e2e74a4bb14a26aba0b903321a0632b84ddb2b1f6527c73efc73"
    assert config["architecture"]["embed_dim"] == 64 and config["architecture"]["target_length"] == 1008
    frontend = encoder.frontend_config()
    assert frontend["top_db"] == 120.0 and frontend["top_db_scope"] == "sample" and frontend["n_fft"] == 512


def test_top_db_floor_is_per_clip_so_batch_mates_do_not_matter():
    encoder = encoders.create("dasheng", random_init=True, **TINY)
    torch.manual_seed(0)
    quiet = torch.zeros(1, 16000)
    quiet[:, :8000] = 0.3 * torch.randn(1, 8000)  # half digital silence: a dynamic range well over 120 dB
    loud = 0.5 * torch.randn(1, 16000)
    mel = encoder.frontend(quiet)
    assert float(mel.min()) == pytest.approx(float(mel.max()) - 120.0, abs=1e-4)
    with torch.no_grad():
        alone = encoder(quiet, [-1]).layers[1]
        batched = encoder(torch.cat([loud * 100, quiet]), [-1]).layers[1]
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)


def test_long_clips_are_chunked_with_restarting_positions():
    encoder = encoders.create("dasheng", random_init=True, **TINY)
    torch.manual_seed(1)
    long_clip = 0.2 * torch.randn(1, 16000 * 15)
    # 1010 frames (252 patches, one chunk) whose first 1008 see the same samples as in the long clip.
    head = long_clip[:, : 1008 * 160 + 256]
    with torch.no_grad():
        out = encoder(long_clip, [0, 1])
        first = encoder(head, [0, 1])
    assert out.grid == encoder.token_grid(16000 * 15) == (375, 1)
    assert first.grid == (252, 1)
    for index in (0, 1):
        torch.testing.assert_close(out.layers[index][:, :252], first.layers[index], atol=1e-5, rtol=1e-5)
    assert encoder.token_grid(160000) == (250, 1)


def test_token_pooling_models_keep_the_first_chunk_cls_as_prefix():
    encoder = encoders.create("dasheng", random_init=True, pooling="token", **TINY)
    assert encoder.num_prefix == 1
    with torch.no_grad():
        out = encoder(torch.randn(2, 16000) * 0.1, [0, 1])
    assert out.prefix[1].shape == (2, 1, 32) and out.layers[1].shape == (2, 25, 32)


def test_key_mapping_round_trip(tmp_path):
    reference = encoders.create("dasheng", random_init=True, **TINY).eval()
    with torch.no_grad():
        reference.model.init_bn.running_mean.normal_()
        reference.model.init_bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "dasheng_synthetic.pt"
    config = {"embed_dim": 32, "depth": 2, "num_heads": 4, "target_length": 1008, "pooling": "mean"}
    torch.save({"model": official_layout(reference), "config": config}, path)
    loaded = encoders.create("dasheng", checkpoint=str(path))
    wave = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        assert torch.equal(loaded(wave, [0, 1]).layers[1], reference(wave, [0, 1]).layers[1])


def shapes_only_state(embed_dim: int, depth: int) -> dict:
    """Tensors with the right shapes and no memory: enough for reading sizes from a checkpoint."""
    def shaped(*shape):
        return torch.zeros(1).expand(*shape)
    state = {
        "patch_embed.proj.weight": shaped(embed_dim, 1, 64, 4),
        "time_pos_embed": shaped(1, embed_dim, 1, 252),
        "front_end.0.mel_scale.fb": shaped(257, 64),
        "blocks.0.attn.qkv.bias": shaped(3 * embed_dim),
    }
    state.update({f"blocks.{i}.mlp.fc1.weight": shaped(4 * embed_dim, embed_dim) for i in range(depth)})
    return state


def test_sizes_come_from_weights_and_stale_configs_of_released_sizes_use_official_heads():
    base = dasheng_config_from_checkpoint({"num_heads": 12}, shapes_only_state(768, 12), "base.pt")
    assert (base.embed_dim, base.depth, base.num_heads, base.mlp_hidden) == (768, 12, 12, 3072)
    # dasheng_06B() forces 1280/32/16 over whatever the file's config says.
    stale = {"embed_dim": 1536, "depth": 24, "num_heads": 24}
    big = dasheng_config_from_checkpoint(stale, shapes_only_state(1280, 32), "06b.pt")
    assert (big.embed_dim, big.depth, big.num_heads) == (1280, 32, 16)
    with pytest.raises(ConfigError, match="config says embed_dim=512 but the weights have 96"):
        dasheng_config_from_checkpoint({"embed_dim": 512, "num_heads": 4}, shapes_only_state(96, 3), "odd.pt")
    odd = dasheng_config_from_checkpoint({"embed_dim": 512}, shapes_only_state(96, 3), "odd.pt", num_heads=6)
    assert odd.num_heads == 6


@pytest.mark.parametrize(
    "config, message",
    [
        ({"num_heads": 4, "mystery": 1}, "does not know: mystery"),
        ({"num_heads": 4, "block_type": "FlashBlock"}, "block_type='FlashBlock'"),
        ({"num_heads": 4, "center": False}, "center=False"),
        ({"num_heads": 4, "patch_size": [32, 4], "patch_stride": [32, 4]}, "patch"),
    ],
)
def test_unsupported_configs_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        dasheng_config_from_checkpoint(config, shapes_only_state(32, 2), "x.pt")


def test_unknown_and_missing_keys_are_named(tmp_path):
    reference = encoders.create("dasheng", random_init=True, **TINY)
    state = official_layout(reference)
    state["decoder.weight"] = torch.zeros(1)
    del state["norm.bias"]
    cfg = dasheng_config_from_checkpoint({"num_heads": 4}, state, "x.pt")
    with pytest.raises(ConfigError, match=r"unexpected keys decoder\.weight; missing keys norm\.bias"):
        dasheng_state_dicts(state, cfg, "x.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": state}, wrong)
    with pytest.raises(ConfigError, match="not an official Dasheng checkpoint"):
        encoders.create("dasheng", checkpoint=str(wrong))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_tokens_match_cpu(dasheng_fixture):
    _, wave, encoder = dasheng_fixture
    with torch.no_grad():
        cpu = encoder(wave, [-1]).layers[1]
        gpu = encoder.to("cuda")(wave.to("cuda"), [-1]).layers[1].cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_valid_tokens_are_the_patches_of_the_clip_alone():
    encoder = encoders.create("dasheng", random_init=True, **TINY)
    # 3 s real in a 10 s batch: alone it has 301 frames -> 75 whole patches (the fixture's official 75 tokens).
    assert encoder.valid_tokens(48000, 160000) == 75
    assert encoder.valid_tokens(160000, 160000) == 250
