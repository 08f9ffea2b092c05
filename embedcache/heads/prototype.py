"""Prototype heads on the token map: `proto` (Bird-MAE, class-bound), `protofloat` and `protobin` (Unmute the Patch
Tokens, class-agnostic; protobin binarises its prototypes with a straight-through estimator)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from embedcache.errors import ConfigError
from embedcache.heads.base import ProbeHead, TokenBatch, make_linear, max_over_frequency


def default_prototypes_per_class(num_classes: int) -> int:
    """The paper's J: 20 prototypes per class, 10 when there are more than 500 classes (as20k)."""
    return 10 if num_classes > 500 else 20


def binarize(prototypes: torch.Tensor) -> torch.Tensor:
    """sign(p) in {-1, +1} (0 -> +1) in the forward pass, identity gradient to `prototypes` in the backward pass."""
    signs = torch.where(prototypes >= 0, 1.0, -1.0).to(prototypes.dtype)
    return signs + (prototypes - prototypes.detach())


class _MaxCosine(torch.autograd.Function):
    """Max over real tokens of unit tokens [B, T, D] x unit prototypes [J, D] -> [B, J], keeping only the argmax
    indices [B, J] for backward instead of the [B, T, J] similarity map."""

    @staticmethod
    def forward(ctx, unit_tokens: torch.Tensor, unit_prototypes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # One matmul on the shared unit tokens: [B, T, D] x [D, J] -> [B, T, J]; freed when forward returns.
        similarity = torch.matmul(unit_tokens, unit_prototypes.t())
        similarity.masked_fill_(mask.logical_not().unsqueeze(-1), -math.inf)
        best, where = similarity.max(dim=1)
        has_tokens = mask.any(dim=1, keepdim=True)
        best = torch.where(has_tokens, best, torch.zeros((), dtype=best.dtype, device=best.device))
        ctx.save_for_backward(unit_tokens, unit_prototypes, where, has_tokens)
        return best

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        unit_tokens, unit_prototypes, where, has_tokens = ctx.saved_tensors
        size, length, dim = unit_tokens.shape
        weights = torch.where(has_tokens, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))  # [B, J]
        rows = where + torch.arange(size, device=where.device).unsqueeze(1) * length  # [B, J] into [B * T] rows
        flat_tokens = unit_tokens.reshape(size * length, dim)
        grad_tokens = grad_prototypes = None
        if ctx.needs_input_grad[1]:
            # d best[b, j] / d p_j is the argmax token: a weighted gather-sum, B*J*D work instead of B*T*J*D.
            grad_prototypes = nn.functional.embedding_bag(
                rows.t(), flat_tokens, per_sample_weights=weights.t().to(flat_tokens.dtype), mode="sum"
            ).to(unit_prototypes.dtype)
        if ctx.needs_input_grad[0]:
            contributions = weights.unsqueeze(-1).to(unit_prototypes.dtype) * unit_prototypes.unsqueeze(0)
            grad_tokens = torch.zeros_like(flat_tokens).index_add_(
                0, rows.reshape(-1), contributions.reshape(-1, dim).to(flat_tokens.dtype)
            ).view(size, length, dim)
        return grad_tokens, grad_prototypes, None


# Devices where protobin's similarity runs as an int8 GEMM on int8 stores (bench/bench_int8.py measured it faster
# there with the same validation choice); CUDA's torch._int_mm is not measured yet, so CUDA keeps the float path.
INT8_GEMM_DEVICES: tuple[str, ...] = ("cpu",)


class _MaxCosineCodes(torch.autograd.Function):
    """_MaxCosine for int8 codes [B, T, D] and binary prototypes: one int8 x int8 -> int32 GEMM (exact), then the
    token norms and the prototypes' common length applied after (a token's positive scale cancels in a cosine).
    Backward is _MaxCosine's, on the batch's shared unit tokens."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor, unit_prototypes: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        size, length, dim = codes.shape
        signs = torch.where(unit_prototypes >= 0, 1, -1).to(torch.int8)  # [J, D]
        dots = torch._int_mm(codes.reshape(size * length, dim).contiguous(), signs.t().contiguous())  # [B*T, J]
        entry = unit_prototypes.detach().abs().amax()  # every entry of a unit +-1 vector: 1 / sqrt(D)
        similarity = dots.float().view(size, length, -1) * (batch.code_inverse_norms.unsqueeze(-1) * entry)
        similarity.masked_fill_(batch.mask.logical_not().unsqueeze(-1), -math.inf)
        best, where = similarity.max(dim=1)
        has_tokens = batch.mask.any(dim=1, keepdim=True)
        best = torch.where(has_tokens, best, torch.zeros((), dtype=best.dtype, device=best.device))
        ctx.batch = batch
        ctx.save_for_backward(unit_prototypes, where, has_tokens)
        return best

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        unit_prototypes, where, has_tokens = ctx.saved_tensors
        unit_tokens = ctx.batch.normalized  # computed once per batch, shared by every head that needs it
        size, length, dim = unit_tokens.shape
        weights = torch.where(has_tokens, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))  # [B, J]
        rows = where + torch.arange(size, device=where.device).unsqueeze(1) * length
        grad_prototypes = nn.functional.embedding_bag(
            rows.t(), unit_tokens.reshape(size * length, dim), per_sample_weights=weights.t().to(unit_tokens.dtype),
            mode="sum",
        ).to(unit_prototypes.dtype)
        return None, grad_prototypes, None


def uses_int8_gemm(batch: TokenBatch) -> bool:
    """Whether binary prototypes meet this batch as an int8 GEMM (int8 codes on a device in INT8_GEMM_DEVICES)."""
    return batch.codes is not None and batch.codes.device.type in INT8_GEMM_DEVICES and not torch.is_autocast_enabled(
        batch.codes.device.type)


def binary_prototype_scores(batch: TokenBatch, prototypes: torch.Tensor) -> torch.Tensor:
    """`prototype_scores` for prototypes whose every entry is +-1 (protobin's forward), as an int8 GEMM when the
    batch holds int8 codes on a device where that is faster (`uses_int8_gemm`), else the float path."""
    if not uses_int8_gemm(batch):
        return prototype_scores(batch, prototypes)
    unit = nn.functional.normalize(prototypes, dim=-1)
    return _MaxCosineCodes.apply(batch.codes, unit, batch)


def prototype_scores(batch: TokenBatch, prototypes: torch.Tensor) -> torch.Tensor:
    """Max over real tokens of the cosine similarity to each prototype: [B, J] for prototypes [J, D]; 0 for a clip
    with no real token."""
    unit = nn.functional.normalize(prototypes, dim=-1).to(batch.normalized.dtype)
    return _MaxCosine.apply(batch.normalized, unit, batch.mask)


def prototype_step_scores(batch: TokenBatch, prototypes: torch.Tensor, n_freq: int) -> torch.Tensor:
    """Per time step, the max over its real frequency tokens of the cosine similarity to each prototype:
    [B, n_time, J] for prototypes [J, D] (tokens time-major, n_freq per step); 0 for a step with no real token."""
    unit = nn.functional.normalize(prototypes, dim=-1).to(batch.normalized.dtype)
    return max_over_frequency(torch.matmul(batch.normalized, unit.t()), batch.mask, n_freq)


def pack_signs(prototypes: torch.Tensor) -> dict:
    """The signs of prototypes [J, D] packed 1 bit per value (bit 1 = +1, 0 = -1, big-endian within a byte)."""
    signs = (prototypes.detach() >= 0).cpu().numpy().reshape(-1)
    return {
        "bits": np.packbits(signs, bitorder="big"),
        "shape": [int(size) for size in prototypes.shape],
        "encoding": "sign-bits",
    }


def unpack_prototypes(packed: dict) -> torch.Tensor:
    """The binary prototypes [J, D] (float32, values -1/+1) from `pack_signs` / `packed_prototypes` output."""
    shape = tuple(int(size) for size in packed["shape"])
    count = int(np.prod(shape))
    bits = np.asarray(packed["bits"], dtype=np.uint8)
    if bits.size * 8 < count:
        raise ValueError(f"packed prototypes: {bits.size} bytes cannot hold shape {shape} ({count} bits)")
    signs = np.unpackbits(bits, count=count, bitorder="big").reshape(shape)
    return torch.from_numpy(signs.astype(np.float32) * 2.0 - 1.0)


class ProtoHead(ProbeHead):
    """`proto`, the Bird-MAE prototypical probe (ppnet as configured for Bird-MAE), on cached tokens.

    J prototypes per class [C * J, D], class c owning rows c*J .. c*J+J-1, initialised uniform in [0, 1) as ppnet.
    Score of prototype j: ReLU(max over real tokens of cos(token, p_j)). Logit of class c: the non-negative
    (ReLU'd) weighted sum of its own J scores plus a bias, weights initialised to 1 and bias to -2 (ppnet's
    correct_class_connection / bias_last_layer). ppnet's epsilon channels, which only guard zero-length vectors,
    are replaced by F.normalize's eps. `auxiliary_loss` is ortho_weight * ||P_c P_c^T - I||_F over all classes,
    divided by C * J * J, with P_c the unit prototypes of class c (ppnet's orthogonality loss).
    Parameters: C J D + C J + C.
    """

    kind = "proto"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        prototypes_per_class: int | None = None,
        ortho_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        per_class = default_prototypes_per_class(num_classes) if prototypes_per_class is None else prototypes_per_class
        if per_class < 1:
            raise ConfigError(f"proto head: prototypes_per_class={per_class} must be >= 1")
        if ortho_weight < 0:
            raise ConfigError(f"proto head: ortho_weight={ortho_weight} must be >= 0")
        self.prototypes_per_class = per_class
        self.ortho_weight = float(ortho_weight)
        self._options = {"prototypes_per_class": per_class, "ortho_weight": self.ortho_weight}
        self.prototypes = nn.Parameter(torch.rand(num_classes * per_class, embed_dim, generator=generator))
        self.class_weight = nn.Parameter(torch.ones(num_classes, per_class))
        self.bias = nn.Parameter(torch.full((num_classes,), -2.0))

    gives_frames = True

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        self._check_dim(batch)
        return self._class_logits(prototype_scores(batch, self.prototypes))

    def frame_logits(self, batch: TokenBatch, n_freq: int) -> torch.Tensor:
        """The clip logit's recipe per time step: each prototype's best cosine over the step's frequency tokens,
        then the class-bound weights [B, n_time, C]."""
        self._check_dim(batch)
        return self._class_logits(prototype_step_scores(batch, self.prototypes, n_freq))

    def _class_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """Prototype scores [..., C * J] -> logits [..., C]: ReLU (it commutes with the max), class weights, bias."""
        scores = scores.relu().unflatten(-1, (self.num_classes, self.prototypes_per_class))
        weight = self.class_weight.relu().to(scores.dtype)
        return torch.einsum("...cj,cj->...c", scores, weight) + self.bias.to(scores.dtype)

    def auxiliary_loss(self) -> torch.Tensor:
        unit = nn.functional.normalize(self.prototypes, dim=-1)
        unit = unit.view(self.num_classes, self.prototypes_per_class, self.embed_dim)
        gram = torch.matmul(unit, unit.transpose(1, 2))  # [C, J, J]
        off_identity = gram - torch.eye(self.prototypes_per_class, device=gram.device, dtype=gram.dtype)
        return self.ortho_weight * torch.linalg.vector_norm(off_identity) / off_identity.numel()


class ProtoFloatHead(ProbeHead):
    """`protofloat`: C * J class-agnostic prototypes, max cosine similarity over real tokens, then Linear(C*J, C).

    Prototypes [C * J, D] are drawn first from the generator (0.02 * randn), then the linear layer (PyTorch's default
    init). No orthogonality loss. Parameters: C J D + C J C + C.
    """

    kind = "protofloat"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        prototypes_per_class: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        per_class = default_prototypes_per_class(num_classes) if prototypes_per_class is None else prototypes_per_class
        if per_class < 1:
            raise ConfigError(f"{self.kind} head: prototypes_per_class={per_class} must be >= 1")
        self.prototypes_per_class = per_class
        self._options = {"prototypes_per_class": per_class}
        count = num_classes * per_class
        self.prototypes = nn.Parameter(torch.randn(count, embed_dim, generator=generator) * 0.02)
        self.fc = make_linear(count, num_classes, True, generator)

    def active_prototypes(self) -> torch.Tensor:
        """The prototypes [C * J, D] the forward pass compares tokens with."""
        return self.prototypes

    gives_frames = True

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        self._check_dim(batch)
        return self.fc(prototype_scores(batch, self.active_prototypes()))

    def frame_logits(self, batch: TokenBatch, n_freq: int) -> torch.Tensor:
        """The similarity map as frame scores: each prototype's best cosine over a time step's frequency tokens,
        then the class weights (the same linear layer as the clip logits) [B, n_time, C]."""
        self._check_dim(batch)
        return self.fc(prototype_step_scores(batch, self.active_prototypes(), n_freq))


class ProtoBinHead(ProtoFloatHead):
    """`protobin`: protofloat whose forward pass uses sign(p) in {-1, +1} (0 -> +1), with a straight-through
    estimator so the optimiser updates the real-valued master copy; the paper's method."""

    kind = "protobin"

    def active_prototypes(self) -> torch.Tensor:
        return binarize(self.prototypes)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        self._check_dim(batch)
        return self.fc(binary_prototype_scores(batch, self.active_prototypes()))

    def packed_prototypes(self) -> dict:
        """The binary prototypes packed 1 bit per value: {"bits": uint8 array, "shape": [C*J, D], "encoding"}."""
        return pack_signs(self.prototypes)
