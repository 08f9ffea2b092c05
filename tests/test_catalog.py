"""The encoder catalog: what `embedcache encoders` prints equals what real encoders compute for 10 s of audio."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from embedcache import encoders
from embedcache.encoders.catalog import (
    FAMILIES,
    VIT_POS_ROWS,
    build_released_vit,
    catalog,
    clip_policy,
    describe,
    describe_encoder,
    format_catalog,
    parameters_on_meta,
    released_vit_state,
)
from embedcache.errors import ConfigError
from embedcache_cli.commands_core import encoders_command

TEN_S = 160000
SHAPE_FIELDS = ("sample_rate", "frontend", "n_mels", "frontend_config", "max_input_seconds", "min_seconds",
                "clip_semantics", "clip_policy", "grid", "tokens", "prefix")


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    return {row["name"]: row for row in catalog()}


def run_10s(encoder: encoders.Encoder) -> encoders.EncoderOutput:
    """One forward pass of a 10 s noise clip through layer 0 (every layer has the same token shape)."""
    wave = torch.randn(1, TEN_S, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.inference_mode():
        return encoder(wave, [0])


def assert_row_matches(row: dict, encoder: encoders.Encoder, output: encoders.EncoderOutput) -> None:
    n_time, n_freq = output.grid
    assert row["grid"] == [n_time, n_freq] == list(encoder.token_grid(TEN_S))
    assert output.layers[0].shape[1] == row["tokens"] == n_time * n_freq
    assert row["prefix"] == encoder.num_prefix == (output.prefix[0].shape[1] if output.prefix else 0)
    assert row["layers"] == encoder.num_layers


def test_catalog_lists_every_registered_encoder(rows):
    assert sorted(rows) == encoders.available()
    assert set(FAMILIES) == set(encoders.available())
    assert all("error" not in row for row in rows.values())


@pytest.mark.parametrize("name", ["beats", "dasheng", "whisper"])
def test_default_size_random_encoder_computes_the_listed_grid(rows, name):
    encoder = encoders.create(name, random_init=True)
    output = run_10s(encoder)
    row = rows[name]
    assert_row_matches(row, encoder, output)
    assert output.layers[0].shape[2] == row["embed_dim"] == encoder.embed_dim
    assert {key: row[key] for key in SHAPE_FIELDS} == {key: describe_encoder(encoder)[key] for key in SHAPE_FIELDS}


def test_listed_sizes_are_the_released_ones(rows):
    # Facts from the official repositories (shared/research/encoders.md), not from this code.
    expected = {
        "audiomae": ([64, 8], 1, 768), "ast": ([101, 12], 2, 768), "eat": ([64, 8], 1, 768),
        "sslam": ([64, 8], 1, 768), "atst_frame": ([250, 1], 0, 768), "beats": ([62, 8], 0, 768),
        "dasheng": ([250, 1], 0, 768), "whisper": ([500, 1], 0, 384), "asit": ([37, 8], 1, 768),
    }  # fmt: skip
    assert {name: (rows[name]["grid"], rows[name]["prefix"], rows[name]["embed_dim"]) for name in expected} == expected
    assert {rows[name]["n_mels"] for name in ("audiomae", "ast", "eat", "sslam", "beats", "asit")} == {128}
    # ASiT (data_transformations.py): 32 kHz, 592 frames -> 37 x 8 = 296 patches + cls, for 5.92 s as for 10 s.
    assert rows["asit"]["sample_rate"] == 32000 and rows["asit"]["valid_tokens"] == 296
    assert describe("asit", seconds=5.92)["grid"] == [37, 8]
    assert (rows["dasheng"]["n_mels"], rows["atst_frame"]["n_mels"], rows["whisper"]["n_mels"]) == (64, 64, 80)


@pytest.mark.parametrize("family", sorted(VIT_POS_ROWS))
def test_vit_family_with_released_shapes_computes_the_listed_grid(rows, family):
    # Narrow and shallow, but the released patch kernel and position table: the grid cannot differ.
    encoder = build_released_vit(family, device="cpu", embed_dim=64, depth=1, mlp_hidden=128)
    output = run_10s(encoder)
    assert_row_matches({**rows[family], "layers": 1}, encoder, output)
    assert rows[family]["frontend_config"] == encoder.frontend_config()


@pytest.mark.parametrize(
    "family, file, options",
    [
        ("beats", "beats/beats_tiny.pt", {}),
        ("dasheng", "dasheng/dasheng_tiny.pt", {}),
        ("ast", "ast/ast_tiny.pth", {"num_heads": 4}),
        ("audiomae", "audiomae/audiomae_tiny.pth", {"num_heads": 4}),
    ],
)
def test_official_layout_checkpoint_gives_the_listed_input_config_and_grid(rows, encoder_fixtures, family, file,
                                                                            options):
    encoder = encoders.create(family, checkpoint=str(encoder_fixtures / file), **options)
    output = run_10s(encoder)
    row = rows[family]
    assert_row_matches({**row, "layers": encoder.num_layers}, encoder, output)
    assert row["frontend_config"] == encoder.frontend_config()
    assert row["clip_policy"] == clip_policy(encoder)


@pytest.mark.parametrize("name", ["melpatch", "vit"])
def test_weightless_and_random_vit_rows(rows, name):
    encoder = encoders.create(name, random_init=name == "vit")
    output = run_10s(encoder)
    assert_row_matches(rows[name], encoder, output)
    assert output.layers[0].shape[2] == rows[name]["embed_dim"]


def test_clip_semantics_follow_the_official_pipelines(rows):
    # Facts from the official code (shared/research/encoders.md), per family.
    for name in ("ast", "audiomae", "eat", "sslam"):
        semantics = rows[name]["clip_semantics"]
        assert semantics["length"] == "fixed" and semantics["input_frames"] == 1024
        assert "log domain, before normalisation" in semantics["padding"]
        assert rows[name]["max_input_seconds"] == pytest.approx((400 + 1023 * 160) / 16000)  # 1024 kaldi frames
        assert rows[name]["clip_policy"].startswith("fixed input (1024 frames, 10.255 s)")
    asit = rows["asit"]["clip_semantics"]
    assert asit["length"] == "fixed" and asit["input_frames"] == 592 and "log domain" in asit["padding"]
    assert rows["asit"]["max_input_seconds"] == pytest.approx((800 + 591 * 320) / 32000)  # 592 frames at 32 kHz
    assert "no recipe for longer inputs" in asit["crop"]
    for name in ("beats", "dasheng", "atst_frame", "whisper", "melpatch", "vit"):
        assert rows[name]["clip_semantics"]["length"] == "any" and rows[name]["max_input_seconds"] is None
    assert "padding_mask" in rows["beats"]["clip_semantics"]["mask"]
    assert "x_length" in rows["dasheng"]["clip_semantics"]["mask"]
    assert rows["dasheng"]["clip_semantics"]["chunking"].startswith("runs of 252 patches (1008 frames)")
    assert rows["atst_frame"]["clip_semantics"]["chunking"].startswith("runs of 1001 frames")
    assert rows["whisper"]["clip_semantics"]["chunking"].startswith("consecutive 30 s windows")
    # The shortest clip that gives one token: one 25 ms kaldi frame padded to 1024; 16 frames for BEATs' patch.
    assert rows["ast"]["min_seconds"] == 0.025 and rows["beats"]["min_seconds"] == 0.175


def test_other_lengths_follow_token_grid_and_the_crop():
    beats_3s = describe("beats", seconds=3.0)
    assert beats_3s["grid"] == [18, 8] and beats_3s["valid_tokens"] == 144  # the fixture's official 18 x 8
    assert describe("beats", seconds=30.0)["grid"] == [187, 8]  # any length: encoded whole
    assert describe("melpatch", seconds=30.0)["grid"] == [187, 4]
    ast_3s = describe("ast", seconds=3.0)
    assert ast_3s["grid"] == [101, 12] and ast_3s["valid_tokens"] == 30 * 12  # fbank padded to 1024 frames
    assert describe("ast", seconds=30.0)["grid"] == [101, 12]  # cropped to its input


def test_parameters_on_meta_is_scoped_and_restored():
    with parameters_on_meta():
        inside = nn.Linear(4096, 4096)
        buffer_module = nn.BatchNorm1d(8)
    assert inside.weight.device.type == "meta" and inside.bias.device.type == "meta"
    assert buffer_module.running_mean.device.type == "cpu"  # buffers stay real (front ends need them)
    with pytest.raises(RuntimeError), parameters_on_meta():
        raise RuntimeError("boom")
    assert nn.Linear(2, 2).weight.device.type == "cpu"


def test_released_vit_state_refuses_unknown_family():
    with pytest.raises(ValueError, match="'beats' is not one of"):
        released_vit_state("beats")
    state = released_vit_state("atst_frame", device="cpu", embed_dim=8, depth=2, mlp_hidden=16)
    assert state["patch_embed.proj.weight"].shape == (8, 1, 64, 4)
    assert "blocks.0.attn.qkv.bias" not in state and "cls_token" not in state
    assert state["pos_embed"].shape == (1, 251, 8) and "blocks.1.mlp.fc2.bias" in state


def test_user_encoder_that_needs_a_checkpoint_is_listed_with_the_reason(monkeypatch):
    def needs_file(checkpoint=None, random_init=False, **options):
        raise ConfigError("mine needs --checkpoint my.pt")

    monkeypatch.setitem(encoders._REGISTERED, "mine", needs_file)
    row = describe("mine")
    assert row == {"name": "mine", "model": "user-registered", "weights": "see its factory",
                   "error": "mine needs --checkpoint my.pt"}
    text = format_catalog([describe("beats"), row])
    assert "mine: mine needs --checkpoint my.pt" in text


def test_cli_prints_the_catalog_as_text_and_json(rows):
    runner = CliRunner()
    result = runner.invoke(encoders_command, ["--json"])
    assert result.exit_code == 0, result.output
    assert {row["name"]: row for row in json.loads(result.output)} == rows
    text = runner.invoke(encoders_command, [])
    assert text.exit_code == 0
    lines = {line.split()[0]: line for line in text.output.splitlines() if line and not line.startswith(" ")}
    assert "62 x 8" in lines["beats"] and "101 x 12" in lines["ast"] and "500 x 1" in lines["whisper"]
    assert "  ast: fixed input of 10.255 s, shortest clip 25 ms" in text.output
    assert "      mask: padded patches are zeroed before the positional convolution" in text.output
    short = json.loads(runner.invoke(encoders_command, ["--json", "--seconds", "3"]).output)
    assert {row["name"]: row["grid"] for row in short}["beats"] == [18, 8]
