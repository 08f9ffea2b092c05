"""Where a prototype head's evidence comes from: per-token similarity maps for a clip, and what to draw them over.

For `protofloat`/`protobin` (class-agnostic prototypes, then Linear(C*J, C)) the prototype that best supports class c
is the one with the largest contribution fc.weight[c, j] * score_j to its logit; for `proto` (class-bound,
non-negative weights) it is the best of class c's own J prototypes. Its similarity map is the cosine similarity of
each real token to it, laid out on the (n_time, n_freq) token grid (token t * n_freq + f).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from embedcache import heads as head_registry
from embedcache.audio import fit_length, load_segment
from embedcache.datasets import read_manifest
from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.store import TokenStore

PROTOTYPE_KINDS = ("proto", "protofloat", "protobin")


def load_head(weights_path: str | Path) -> head_registry.ProbeHead:
    """Rebuild a trained head from a run's weights/<name>_seed<s>.safetensors (its metadata holds the config)."""
    path = Path(weights_path)
    if not path.is_file():
        raise ConfigError(f"{path}: no head weights there (a probe run writes weights/<head>_seed<s>.safetensors)")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "config" not in metadata:
        raise ConfigError(f"{path}: no 'config' in the safetensors metadata; it was not written by `embedcache probe`")
    config = json.loads(metadata["config"])
    kind = config.pop("kind")
    head = head_registry.create(kind, **config)
    head.load_state_dict(load_file(str(path)))
    return head.eval()


@dataclass
class ClipEvidence:
    """One clip through a prototype head.

    probabilities: [C]; similarity: [T, M] cosine similarity of every token to each of the head's M prototypes
    (NaN at padding tokens); scores: [M] max over real tokens; contributions: [C, M] what each prototype adds to
    each class logit (-inf where a prototype cannot support a class).
    """

    probabilities: np.ndarray
    similarity: np.ndarray
    scores: np.ndarray
    contributions: np.ndarray

    def best_prototype(self, label: int) -> int:
        """Index of the prototype that adds the most to class `label`'s logit."""
        return int(np.argmax(self.contributions[label]))

    def top_classes(self, count: int) -> list[int]:
        """The `count` most probable classes, most probable first."""
        return [int(c) for c in np.argsort(-self.probabilities, kind="stable")[:count]]


# How a drawn class relates to the clip: true and predicted, true but missed, predicted but not true, neither.
CORRECT, MISSED, FALSE_POSITIVE, NEITHER = "correct", "missed", "false positive", "not predicted"


def predicted_classes(probabilities: np.ndarray, multilabel: bool, threshold: float = 0.5) -> set[int]:
    """The classes a head predicts for a clip: probability >= threshold (multi-label) or the argmax (multi-class)."""
    if not multilabel:
        return {int(np.argmax(probabilities))}
    return {int(c) for c in np.flatnonzero(np.asarray(probabilities) >= threshold)}


def panel_classes(probabilities: np.ndarray, true: set[int], predicted: set[int], top: int,
                  max_extra_true: int = 6) -> list[tuple[int, str]]:
    """The classes to draw for one clip, each with its status: the `top` most probable, then every true class not
    among them (up to max_extra_true, most probable first), so a missed true label is always shown."""
    order = [int(c) for c in np.argsort(-np.asarray(probabilities), kind="stable")]
    chosen = order[:top]
    chosen += [c for c in order if c in true and c not in chosen][:max_extra_true]

    def status(c: int) -> str:
        if c in true:
            return CORRECT if c in predicted else MISSED
        return FALSE_POSITIVE if c in predicted else NEITHER

    return [(c, status(c)) for c in chosen]


def cover_classes(labels: np.ndarray, candidates: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Up to `count` clips that cover the classes: for each class in turn not yet covered by a chosen clip, the first
    candidate that has it. labels: [N, C] 0/1 of the whole store; candidates: store indices in the order to try.
    Returns (store index, the class it was chosen for)."""
    chosen: list[tuple[int, int]] = []
    covered = np.zeros(labels.shape[1], dtype=bool)
    candidates = np.asarray(candidates, dtype=np.int64)
    for c in range(labels.shape[1]):
        if len(chosen) >= count:
            break
        if covered[c]:
            continue
        taken = {index for index, _ in chosen}
        having = [int(i) for i in candidates[labels[candidates, c] > 0] if int(i) not in taken]
        if having:
            chosen.append((having[0], c))
            covered |= labels[having[0]] > 0
    return chosen


def head_prototypes(head: head_registry.ProbeHead) -> torch.Tensor:
    """The prototypes [M, D] the head compares tokens with in its forward pass."""
    if head.kind not in PROTOTYPE_KINDS:
        raise ConfigError(f"{head.kind} head has no prototypes; a prototype map needs {', '.join(PROTOTYPE_KINDS)}")
    if hasattr(head, "active_prototypes"):
        return head.active_prototypes().detach()
    return head.prototypes.detach()


@torch.no_grad()
def clip_evidence(head: head_registry.ProbeHead, tokens: torch.Tensor, mask: torch.Tensor,
                  multilabel: bool = True) -> ClipEvidence:
    """Similarity maps and class support of one clip's tokens [T, D] (mask [T], True = real) under a prototype head."""
    tokens = tokens.float()
    prototypes = head_prototypes(head).float()
    unit_tokens = torch.nn.functional.normalize(tokens, dim=-1)
    unit_prototypes = torch.nn.functional.normalize(prototypes, dim=-1)
    similarity = unit_tokens @ unit_prototypes.t()  # [T, M]
    real = similarity.masked_fill(~mask[:, None], -torch.inf)
    scores = torch.where(mask.any(), real.max(dim=0).values, torch.zeros(()))  # [M]
    logits = head(head_registry.TokenBatch(tokens[None], mask[None]))[0]
    probabilities = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=0)
    if head.kind == "proto":
        per_class = head.prototypes_per_class
        weight = head.class_weight.relu()  # [C, J]
        contributions = torch.full((head.num_classes, len(scores)), -torch.inf)
        for c in range(head.num_classes):
            own = slice(c * per_class, (c + 1) * per_class)
            contributions[c, own] = weight[c] * scores[own].relu()
    else:
        contributions = head.fc.weight * scores[None, :]  # [C, M]
    return ClipEvidence(
        probabilities=probabilities.numpy(),
        similarity=similarity.masked_fill(~mask[:, None], torch.nan).numpy(),
        scores=scores.numpy(),
        contributions=contributions.numpy(),
    )


def grid_map(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per-token values [T] (time-major) -> [n_freq, n_time], frequency rows ascending (for origin='lower')."""
    n_time, n_freq = grid
    return np.asarray(values, dtype=np.float64).reshape(n_time, n_freq).T


@dataclass
class Background:
    """What a similarity map is drawn over: a log-mel spectrogram [bins, frames] or the token-grid energy."""

    image: np.ndarray
    kind: str  # "spectrogram" or "token energy"
    seconds: float | None  # clip length the image spans (None: in token units)
    note: str


def log_mel(wave: np.ndarray, sample_rate: int, n_mels: int = 64) -> np.ndarray:
    """A display log-mel spectrogram [n_mels, frames] (25 ms windows, 10 ms hop) of a mono wave [S]."""
    import torchaudio

    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=int(0.025 * sample_rate), hop_length=int(0.010 * sample_rate), n_mels=n_mels,
    )
    return torch.log(transform(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))) + 1e-6).numpy()


def token_energy(tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """L2 norm of every real token on the grid [n_freq, n_time] (NaN at padding)."""
    norms = tokens.float().norm(dim=-1).masked_fill(~mask, torch.nan).numpy()
    return grid_map(norms, grid)


def clip_background(store: TokenStore, index: int, tokens: torch.Tensor, mask: torch.Tensor,
                    manifest_cache: dict | None = None) -> Background:
    """The clip's spectrogram, recomputed from the audio named by the store's manifest when it can be read
    unchanged; otherwise the token-grid energy, with the reason."""
    manifest_info = store.provenance.get("manifest") or {}
    policy = store.provenance.get("clip_policy") or {}
    fallback = "token-grid energy"
    if not manifest_info.get("path") or not policy.get("num_samples"):
        return Background(token_energy(tokens, mask, store.grid), "token energy", None,
                          f"{fallback}: the store records no manifest audio")
    cache = manifest_cache if manifest_cache is not None else {}
    path = manifest_info["path"]
    try:
        if path not in cache:
            try:
                cache[path] = read_manifest(path)
            except (EmbedcacheError, OSError) as error:
                cache[path] = f"cannot read {path} ({error})"
        manifest = cache[path]
        if isinstance(manifest, str):
            raise ConfigError(manifest)
        if manifest_info.get("sha256") and manifest.sha256 != manifest_info["sha256"]:
            raise ConfigError(f"{path} changed since extraction (sha256 differs)")
        clip_id = str(store.recording_ids[index])  # a window's recording is the manifest clip
        clip = next((c for c in manifest.clips if c.clip_id == clip_id), None)
        if clip is None:
            raise ConfigError(f"clip {clip_id} is not in {path}")
        sample_rate, num_samples = int(policy["sample_rate"]), int(policy["num_samples"])
        wave, _ = fit_length(load_segment(clip.path, sample_rate, int(store.offsets[index]), num_samples), num_samples)
    except (EmbedcacheError, OSError) as error:
        return Background(token_energy(tokens, mask, store.grid), "token energy", None, f"{fallback}: {error}")
    return Background(log_mel(wave, sample_rate), "spectrogram", num_samples / sample_rate,
                      f"log-mel of {clip.path.name}")
