"""Pure key remaps from each family's official checkpoint layout onto SpectrogramViT's timm-style names."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

Tensors = dict[str, torch.Tensor]

EAT_IMAGE = "modality_encoders.IMAGE."
ATST_TEACHER = "model.teacher.encoder."


def strip_prefix(state: Tensors, prefix: str) -> Tensors:
    """Drop `prefix` from every key that has it; keys without it are kept as they are."""
    return {key.removeprefix(prefix): value for key, value in state.items()}


def drop_keys(state: Tensors, prefixes: Iterable[str]) -> Tensors:
    """Remove every key that equals or starts with one of `prefixes` (heads, decoders, teachers)."""
    prefixes = tuple(prefixes)
    return {key: value for key, value in state.items() if not key.startswith(prefixes)}


def rename_prefixes(state: Tensors, renames: dict[str, str]) -> Tensors:
    """Rename the first matching key prefix per key (`renames` old -> new)."""
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def remap_audiomae(state: Tensors) -> Tensors:
    """AudioMAE pre-trained (`ckpt['model']`) or fine-tuned (`models_vit`) keys -> canonical names.

    The pre-training decoder (`decoder_*`, `mask_token`) and the fine-tuning head (`head.*`, and `fc_norm.*`,
    which normalises the pooled vector, not the tokens) are dropped.
    """
    state = strip_prefix(state, "module.")
    return drop_keys(state, ("decoder_", "mask_token", "head.", "fc_norm."))


def remap_ast(state: Tensors) -> Tensors:
    """AST (DataParallel `module.v.*`, `module.mlp_head.*`) -> canonical; the DeiT and AudioSet heads are dropped."""
    state = strip_prefix(state, "module.")
    state = drop_keys(state, ("mlp_head.", "v.head.", "v.head_dist."))
    return strip_prefix(state, "v.")


def remap_eat(state: Tensors) -> Tensors:
    """EAT / SSLAM fairseq keys (pre-trained, or fine-tuned with a `model.` prefix) -> canonical names.

    extra_tokens -> cls_token, local_encoder.proj -> patch_embed.proj, fixed_positional_encoder.positions ->
    pos_embed (patch rows only), context_encoder.norm -> pre_norm; the CNN decoder, EMA teacher, projection
    heads and the fine-tuning head are dropped.
    """
    if any(key.startswith("model." + EAT_IMAGE) for key in state):
        state = strip_prefix(state, "model.")
    state = drop_keys(
        state,
        (
            "_ema",
            EAT_IMAGE + "decoder.",
            "shared_decoder.",
            "recon_proj.",
            "cls_proj.",
            "center",
            "fc_norm.",
            "head.",
        ),
    )
    return rename_prefixes(
        state,
        {
            EAT_IMAGE + "local_encoder.proj.": "patch_embed.proj.",
            EAT_IMAGE + "extra_tokens": "cls_token",
            EAT_IMAGE + "fixed_positional_encoder.positions": "pos_embed",
            EAT_IMAGE + "context_encoder.norm.": "pre_norm.",
        },
    )


def remap_atst_frame(state: Tensors) -> Tensors:
    """ATST-Frame Lightning `state_dict` (teacher encoder) or a bare encoder state -> canonical names.

    The linear patch embedding [D, 64 * 4] becomes the equivalent Conv2d weight [D, 1, 64, 4] (freq x time);
    `norm_frame` is the final norm; `mask_embed` (pre-training only) and the student/projectors are dropped.
    """
    if any(key.startswith(ATST_TEACHER) for key in state):
        state = {key[len(ATST_TEACHER) :]: value for key, value in state.items() if key.startswith(ATST_TEACHER)}
    state = drop_keys(state, ("mask_embed",))
    out = {}
    for key, value in state.items():
        if key == "patch_embed.patch_embed.weight":
            key, value = "patch_embed.proj.weight", value.reshape(value.shape[0], 1, 64, -1)
        elif key == "patch_embed.patch_embed.bias":
            key = "patch_embed.proj.bias"
        elif key.startswith("norm_frame."):
            key = "norm." + key[len("norm_frame.") :]
        out[key] = value
    return out


def remap_asit(state: Tensors) -> Tensors:
    """ASiT `teacher` (`backbone.*`), DDP `student` (`module.backbone.*`) or bare backbone keys -> canonical names.

    Keys are timm's already; the pre-training heads `head_cls.*` (MLP + weight-normed prototype layers) and
    `head_recons.*` (reconstruction MLP + transposed conv) are dropped.
    """
    state = strip_prefix(state, "module.")
    state = drop_keys(state, ("head_cls.", "head_recons."))
    return strip_prefix(state, "backbone.")


REMAPS: dict[str, Callable[[Tensors], Tensors]] = {
    "audiomae": remap_audiomae,
    "ast": remap_ast,
    "eat": remap_eat,
    "sslam": remap_eat,
    "atst_frame": remap_atst_frame,
    "asit": remap_asit,
}

# Key fragments that identify a family's official file, for "this looks like a X checkpoint" hints.
_SIGNATURES: list[tuple[str, str]] = [
    ("encoder.layers.0.self_attn.grep_linear.weight", "beats"),
    ("front_end.0.mel_scale.fb", "dasheng"),
    ("init_bn.1.running_mean", "dasheng"),
    (EAT_IMAGE + "local_encoder.proj.weight", "eat or sslam"),
    ("model." + EAT_IMAGE + "local_encoder.proj.weight", "eat or sslam"),
    ("module.v.patch_embed.proj.weight", "ast"),
    ("v.patch_embed.proj.weight", "ast"),
    (ATST_TEACHER + "patch_embed.patch_embed.weight", "atst_frame"),
    ("patch_embed.patch_embed.weight", "atst_frame"),
    ("backbone.patch_embed.proj.weight", "asit"),
    ("module.backbone.patch_embed.proj.weight", "asit"),
    ("decoder_pred.weight", "audiomae"),
    ("encoder.conv1.weight", "whisper"),
    ("decoder_embed.weight", "audiomae"),
]


def guess_family(keys: Iterable[str]) -> str | None:
    """The encoder family whose official layout these state-dict keys look like, or None."""
    keys = set(keys)
    for fragment, family in _SIGNATURES:
        if fragment in keys:
            return family
    return None
