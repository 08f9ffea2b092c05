"""BEATs: parity with the official code (shared fixture), key mapping, relative buckets, refusals, GPU path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedcache import encoders
from embedcache.encoders.beats import (
    BeatsConfig,
    beats_state_dict,
    relative_position_buckets,
    weight_norm_weight,
)
from embedcache.errors import ConfigError

TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_pos=16, conv_pos_groups=4)


@pytest.fixture
def beats_fixture(encoder_fixtures):
    folder = encoder_fixtures / "beats"
    wave = torch.from_numpy(np.load(folder / "input.npy"))
    encoder = encoders.create("beats", checkpoint=str(folder / "beats_tiny.pt"))
    return folder, wave, encoder


def official_layout(encoder, cfg: dict) -> dict:
    """Our module's weights written back in the official file layout (weight_norm names, per-layer tables)."""
    state = {}
    for key, value in encoder.model.state_dict().items():
        if key.startswith("encoder.pos_conv."):
            state["encoder.pos_conv.0." + key.rsplit(".", 1)[1]] = value.clone()
        elif key == "encoder.relative_attention_bias.weight":
            for i in range(cfg["encoder_layers"]):
                state[f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"] = value
        else:
            state[key] = value.clone()
    return state


def full_cfg(**changes) -> dict:
    cfg = {**BeatsConfig(**TINY).__dict__, "dropout": 0.1, "finetuned_model": False, **changes}
    return cfg


def test_fbank_matches_official(beats_fixture):
    folder, wave, encoder = beats_fixture
    fbank = encoder.fbank(wave)
    expected = np.load(folder / "expected_fbank.npy")
    assert fbank.shape == expected.shape == (1, 298, 128)
    np.testing.assert_allclose(fbank.numpy(), expected, atol=1e-4, rtol=1e-4)


def test_every_layer_and_tokens_match_official(beats_fixture):
    folder, wave, encoder = beats_fixture
    with torch.no_grad():
        out = encoder(wave, [0, 1])
    layers = np.load(folder / "expected_layers.npy")
    assert out.grid == (18, 8) == encoder.token_grid(wave.shape[-1])
    assert out.prefix == {}
    for index in (0, 1):
        np.testing.assert_allclose(out.layers[index].numpy(), layers[index], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out.layers[1].numpy(), np.load(folder / "expected_tokens.npy"), atol=1e-4, rtol=1e-4)


def test_config_comes_from_the_checkpoint(beats_fixture):
    _, _, encoder = beats_fixture
    assert encoder.num_layers == 2 and encoder.embed_dim == 64
    assert encoder.cfg.max_distance == 800 and encoder.cfg.deep_norm
    assert math.isclose(encoder.cfg.deep_norm_alpha, math.sqrt(2.0))
    config = encoder.config()
    assert config["checkpoint_sha256"] == "834b9ee46c555551b6e2c62b813f5d4fe983e88b31f2a12a52860e771666b7d7"
    assert encoder.frontend_config()["window_type"] == "povey"
    assert encoder.frontend_config()["waveform_scale"] == 2.0**15


def test_batched_clips_equal_single_clips(beats_fixture):
    _, wave, encoder = beats_fixture
    other = torch.roll(wave, 4000, dims=-1) * 0.5
    with torch.no_grad():
        batched = encoder(torch.cat([wave, other]), [1]).layers[1]
        single = encoder(other, [1]).layers[1]
    torch.testing.assert_close(batched[1:], single, atol=1e-5, rtol=1e-5)


def test_relative_position_buckets_follow_t5():
    buckets = relative_position_buckets(1, 2000, num_buckets=320, max_distance=800)[0]
    # memory - query: 0 -> 0, +d -> 160 + d (exact below 80), log-spaced up to bucket 159 / 319.
    assert buckets[0] == 0 and buckets[1] == 161 and buckets[79] == 160 + 79
    assert buckets[80] == 160 + 80
    expected_400 = 80 + int(math.log(400 / 80) / math.log(800 / 80) * 80)
    assert buckets[400] == 160 + expected_400
    assert buckets[1999] == 319
    backwards = relative_position_buckets(2000, 1, 320, 800)[:, 0]
    assert backwards[1] == 1 and backwards[79] == 79 and backwards[1999] == 159


def test_weight_norm_keeps_g_as_the_per_tap_norm():
    v = torch.randn(8, 2, 5)
    g = torch.rand(1, 1, 5) + 0.5
    weight = weight_norm_weight(g, v)
    torch.testing.assert_close(weight.norm(dim=(0, 1)), g.flatten())


def test_key_mapping_round_trip_through_an_official_layout_file(tmp_path):
    reference = encoders.create("beats", random_init=True, **TINY)
    cfg = full_cfg()
    path = tmp_path / "beats_synthetic.pt"
    torch.save({"cfg": cfg, "model": official_layout(reference, cfg)}, path)
    loaded = encoders.create("beats", checkpoint=str(path))
    wave = torch.randn(2, 8000) * 0.1
    with torch.no_grad():
        expected = reference(wave, [0, 1])
        got = loaded(wave, [0, 1])
    assert got.grid == (3, 8)
    for index in (0, 1):
        assert torch.equal(got.layers[index], expected.layers[index])


def test_pre_ln_variant_normalises_only_the_last_layer(tmp_path):
    encoder = encoders.create("beats", random_init=True, layer_norm_first=True, deep_norm=False,
                              gru_rel_pos=False, **TINY)
    with torch.no_grad():
        out = encoder(torch.randn(1, 8000) * 0.1, [0, 1])
    last = out.layers[1]
    # The final encoder.layer_norm (weight 1, bias 0 at init) gives zero-mean, unit-variance tokens.
    torch.testing.assert_close(last.mean(-1), torch.zeros(last.shape[:2]), atol=1e-5, rtol=0)
    assert out.layers[0].std(-1).mean() > 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"drop": "deep_norm"}, "lacks deep_norm"),
        ({"add": "rope_theta"}, "does not know: rope_theta"),
        ({"activation_fn": "relu"}, "activation_fn 'relu'"),
    ],
)
def test_bad_cfg_is_refused(tmp_path, change, message):
    reference = encoders.create("beats", random_init=True, **TINY)
    cfg = full_cfg()
    state = official_layout(reference, cfg)
    if "drop" in change:
        del cfg[change["drop"]]
    elif "add" in change:
        cfg[change["add"]] = 1
    else:
        cfg.update(change)
    path = tmp_path / "bad.pt"
    torch.save({"cfg": cfg, "model": state}, path)
    with pytest.raises(ConfigError, match=message):
        encoders.create("beats", checkpoint=str(path))


def test_unknown_missing_and_unshared_keys_are_named():
    reference = encoders.create("beats", random_init=True, **TINY)
    cfg = BeatsConfig(**TINY)
    state = official_layout(reference, full_cfg())
    state["encoder.extra.weight"] = torch.zeros(1)
    del state["encoder.layers.1.fc2.bias"]
    with pytest.raises(ConfigError, match=r"unexpected keys encoder\.extra\.weight.*missing keys encoder\.layers\.1"):
        beats_state_dict(state, cfg, "x.pt")
    state = official_layout(reference, full_cfg())
    state["encoder.layers.1.self_attn.relative_attention_bias.weight"] = torch.zeros(320, 4)
    with pytest.raises(ConfigError, match="differs from encoder.layers.0"):
        beats_state_dict(state, cfg, "x.pt")
    state = official_layout(reference, full_cfg())
    state["encoder.layers.0.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConfigError, match=r"fc1.weight has shape \(3, 3\)"):
        beats_state_dict(state, cfg, "x.pt")


def test_fine_tuned_head_is_ignored():
    reference = encoders.create("beats", random_init=True, **TINY)
    state = official_layout(reference, full_cfg())
    state["predictor.weight"] = torch.zeros(527, 32)
    assert "predictor.weight" not in beats_state_dict(state, BeatsConfig(**TINY), "x.pt")


def test_wrong_and_corrupt_files_are_refused(tmp_path):
    wrong = tmp_path / "state_only.pt"
    torch.save({"weight": torch.zeros(2)}, wrong)
    with pytest.raises(ConfigError, match="not an official BEATs checkpoint"):
        encoders.create("beats", checkpoint=str(wrong))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(range(200)))
    with pytest.raises(ConfigError, match="corrupt.pt"):
        encoders.create("beats", checkpoint=str(corrupt))
    with pytest.raises(ConfigError, match="needs --checkpoint"):
        encoders.create("beats")


def test_grid_for_ten_seconds_and_too_short_clips():
    encoder = encoders.create("beats", random_init=True, **TINY)
    assert encoder.token_grid(160000) == (62, 8)  # 998 frames -> 62 patches, 6 frames dropped
    with pytest.raises(ConfigError, match="fewer than 16 fbank frames"):
        encoder(torch.zeros(1, 2000), [0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_tokens_match_cpu(beats_fixture):
    _, wave, encoder = beats_fixture
    with torch.no_grad():
        cpu = encoder(wave, [1]).layers[1]
        gpu = encoder.to("cuda")(wave.to("cuda"), [1]).layers[1].cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_random_init_is_seeded_and_recorded():
    first = encoders.create("beats", random_init=True, seed=3, **TINY)
    again = encoders.create("beats", random_init=True, seed=3, **TINY)
    other = encoders.create("beats", random_init=True, seed=4, **TINY)
    weight = "encoder.layers.0.fc1.weight"
    assert torch.equal(first.model.state_dict()[weight], again.model.state_dict()[weight])
    assert not torch.equal(first.model.state_dict()[weight], other.model.state_dict()[weight])
    assert first.config()["random_init"] and first.config()["options"]["seed"] == 3
    with torch.no_grad():
        out = first(torch.randn(1, 8000) * 0.1)  # default: the last layer, negative indices allowed
    assert list(out.layers) == [1]


def test_valid_tokens_are_the_patches_of_the_clip_alone():
    encoder = encoders.create("beats", random_init=True, **TINY)
    # 3 s real in a 10 s batch: alone it has 298 frames -> 18 whole patches (the fixture's official 18 x 8 grid).
    assert encoder.valid_tokens(48000, 160000) == 18 * 8
    assert encoder.valid_tokens(160000, 160000) == 62 * 8
