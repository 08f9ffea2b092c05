"""The generic ViT: the seeded random `vit` encoder, sin-cos tables, token order and position handling."""

import json

import pytest
import torch

from embedcache.encoders import create
from embedcache.encoders.vit import (
    FREQ_FIRST,
    SpectrogramViT,
    ViTSpec,
    create_vit,
    sincos_1d,
    sincos_2d,
)
from embedcache.errors import ConfigError


def _wave(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, int(16000 * seconds), generator=gen) * 0.1


def test_random_vit_shapes_grid_and_prefix_for_ten_seconds():
    encoder = create("vit", random_init=True)
    out = encoder(_wave(2, 10.0), [0, 1])
    # 10 s -> 998 kaldi frames -> 62 time patches x 8 frequency patches.
    assert out.grid == (62, 8) == encoder.token_grid(160000)
    assert set(out.layers) == {0, 1}
    assert out.layers[1].shape == (2, 496, 64)
    assert out.prefix[1].shape == (2, 1, 64)
    assert encoder.num_layers == 2 and encoder.embed_dim == 64 and encoder.num_prefix == 1
    assert torch.isfinite(out.layers[0]).all()


@pytest.mark.parametrize("seconds, n_time", [(0.5, 3), (1.0, 6), (3.0, 18), (12.0, 74)])
def test_random_vit_works_for_any_length(seconds, n_time):
    encoder = create_vit(random_init=True, depth=1)
    out = encoder(_wave(1, seconds), [0])
    assert out.grid == (n_time, 8) == encoder.token_grid(int(16000 * seconds))
    assert out.layers[0].shape == (1, n_time * 8, 64)


def test_random_vit_is_deterministic_per_seed_and_differs_across_seeds():
    wave = _wave(1, 2.0)
    first = create_vit(random_init=True, seed=3)(wave, [1]).layers[1]
    again = create_vit(random_init=True, seed=3)(wave, [1]).layers[1]
    other = create_vit(random_init=True, seed=4)(wave, [1]).layers[1]
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.1


def test_random_vit_config_records_random_init_and_rebuilds():
    encoder = create("vit", random_init=True, seed=7, embed_dim=32, depth=3)
    config = json.loads(json.dumps(encoder.config()))
    assert config["random_init"] is True and config["seed"] == 7
    assert config["architecture"]["embed_dim"] == 32 and config["architecture"]["depth"] == 3
    assert encoder.max_input_samples() is None  # any length
    rebuilt = create("vit", random_init=True, **config["options"])
    wave = _wave(1, 1.0)
    assert torch.equal(rebuilt(wave, [2]).layers[2], encoder(wave, [2]).layers[2])
    assert encoder.frontend_config()["kind"] == "kaldi-fbank"


def test_random_vit_options_are_honoured():
    encoder = create_vit(
        random_init=True, embed_dim=48, depth=3, num_heads=3, patch_size=8, n_mels=64, num_prefix=2
    )
    out = encoder(_wave(1, 1.0), [-1])
    # 98 frames -> 12 time patches of 8; 64 mels -> 8 frequency patches.
    assert out.grid == (12, 8)
    assert out.layers[2].shape == (1, 96, 48)
    assert out.prefix[2].shape == (1, 2, 48)


def test_random_vit_layer_outputs_are_nested_block_outputs():
    encoder = create_vit(random_init=True, depth=3)
    wave = _wave(1, 1.0)
    full = encoder(wave, [0, 1, 2])
    single = encoder(wave, [1])
    assert torch.equal(full.layers[1], single.layers[1])
    assert not torch.allclose(full.layers[0], full.layers[1])


def test_vit_refuses_missing_weights_checkpoint_and_unknown_options():
    with pytest.raises(ConfigError, match="--random-init"):
        create("vit")
    with pytest.raises(ConfigError, match="--checkpoint"):
        create("vit", checkpoint="x.pt", random_init=True)
    with pytest.raises(ConfigError, match="embed_size"):
        create("vit", random_init=True, embed_size=64)
    with pytest.raises(ConfigError, match="layers"):
        create_vit(random_init=True)(_wave(1, 1.0), [5])
    with pytest.raises(ConfigError, match="fewer than one patch"):
        create_vit(random_init=True)(_wave(1, 0.1), [0])


def test_valid_tokens_counts_the_time_steps_of_the_clip_alone():
    encoder = create_vit(random_init=True)
    # 3 s real inside a 10 s batch: alone it has 298 frames -> 298 // 16 = 18 whole patches.
    assert encoder.valid_tokens(48000, 160000) == 18 * 8 == encoder.token_grid(48000)[0] * 8
    assert encoder.valid_tokens(160000, 160000) == 62 * 8


def test_sincos_1d_values():
    table = sincos_1d(4, torch.tensor([0, 1, 3]))
    # omega = [1, 1/100]; columns [sin(p), sin(p/100), cos(p), cos(p/100)].
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [0.8414710, 0.0099998, 0.5403023, 0.9999500],
            [0.1411200, 0.0299955, -0.9899925, 0.9995500],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(table, expected, atol=1e-6, rtol=0)


def test_sincos_2d_first_half_encodes_width_second_half_height():
    table = sincos_2d(8, 3, 5)
    assert table.shape == (15, 8)
    row = 2 * 5 + 4  # h = 2, w = 4
    torch.testing.assert_close(table[row, :4], sincos_1d(4, torch.tensor([4]))[0].float())
    torch.testing.assert_close(table[row, 4:], sincos_1d(4, torch.tensor([2]))[0].float())


def _identity_blocks_model(layout: str) -> SpectrogramViT:
    """A model whose blocks add nothing (attn/mlp outputs zeroed) and whose positions are zero."""
    patch, stride = (4, 4), (4, 4)
    spec = ViTSpec(
        embed_dim=8,
        depth=1,
        num_heads=2,
        mlp_hidden=16,
        n_freq_bins=12,
        input_layout=layout,
        patch=patch,
        stride=stride,
        prefix=(),
        pos_grid=(5, 3),
        final_norm=False,
    )
    model = SpectrogramViT(spec)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.patch_embed.proj.weight.copy_(torch.randn(model.patch_embed.proj.weight.shape, generator=gen))
        for parameter in (model.blocks[0].attn.proj, model.blocks[0].mlp.fc2):
            parameter.weight.zero_()
            parameter.bias.zero_()
    return model


@pytest.mark.parametrize("layout", ["time_first", FREQ_FIRST])
def test_tokens_come_out_time_major_for_both_layouts(layout):
    model = _identity_blocks_model(layout)
    features = torch.randn(1, 20, 12, generator=torch.Generator().manual_seed(1))  # [B, frames, bins]
    outputs, grid = model(features, [0])
    tokens = model.to_time_major(outputs[0], grid)
    assert grid == (5, 3)
    weight = model.patch_embed.proj.weight[:, 0]  # [D, kh, kw] in the model's own layout
    bias = model.patch_embed.proj.bias
    for t in range(5):
        for f in range(3):
            patch = features[0, 4 * t : 4 * t + 4, 4 * f : 4 * f + 4]  # (time, freq)
            if layout == FREQ_FIRST:
                patch = patch.T
            expected = (weight * patch).sum(dim=(1, 2)) + bias
            torch.testing.assert_close(tokens[0, t * 3 + f], expected, atol=1e-5, rtol=1e-5)


def test_to_time_major_reorders_frequency_major_indices():
    model = _identity_blocks_model(FREQ_FIRST)
    own = torch.arange(15).reshape(1, 15, 1).float()  # own index = f * 5 + t
    canonical = model.to_time_major(own, (5, 3))[0, :, 0]
    expected = torch.tensor([f * 5 + t for t in range(5) for f in range(3)]).float()
    assert torch.equal(canonical, expected)


def test_position_table_crop_and_refusal_and_interpolation():
    spec = ViTSpec(
        embed_dim=8,
        depth=1,
        num_heads=2,
        mlp_hidden=16,
        n_freq_bins=12,
        patch=(4, 4),
        stride=(4, 4),
        pos_grid=(5, 3),
    )
    model = SpectrogramViT(spec)
    with torch.no_grad():
        model.pos_embed.copy_(torch.arange(16 * 8).reshape(1, 16, 8).float())
    # Time-first table: row 1 + t * 3 + f; a 2-step grid keeps the first 6 patch rows.
    torch.testing.assert_close(model.patch_positions((2, 3)), model.pos_embed[0, 1:7])
    with pytest.raises(ConfigError, match="does not fit"):
        model.patch_positions((6, 3))
    stretched = SpectrogramViT(ViTSpec(**{**spec.__dict__, "pos_resize": "interpolate"}))
    with torch.no_grad():
        stretched.pos_embed.copy_(model.pos_embed)
    assert stretched.patch_positions((10, 3)).shape == (30, 8)
    torch.testing.assert_close(stretched.patch_positions((5, 3)), model.pos_embed[0, 1:])


def test_freq_first_table_is_cropped_per_frequency_row():
    spec = ViTSpec(
        embed_dim=4,
        depth=1,
        num_heads=2,
        mlp_hidden=8,
        n_freq_bins=12,
        input_layout=FREQ_FIRST,
        patch=(4, 4),
        stride=(4, 4),
        prefix=("cls", "dist"),
        pos_grid=(5, 3),
    )
    model = SpectrogramViT(spec)
    with torch.no_grad():
        model.pos_embed.copy_(torch.arange(17).reshape(1, 17, 1).expand(1, 17, 4).float())
    rows = model.patch_positions((2, 3))[:, 0]
    # Own order f * 5 + t after the 2 prefix rows; keep t < 2 for each f.
    assert rows.tolist() == [2.0, 3.0, 7.0, 8.0, 12.0, 13.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_vit_on_cuda_matches_cpu():
    encoder = create_vit(random_init=True)
    wave = _wave(2, 3.0)
    cpu = encoder(wave, [1]).layers[1]
    gpu = encoder.cuda()(wave.cuda(), [1]).layers[1].cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
