"""`frame_linear`: sound-event detection's linear probe, one linear layer applied to every token time step."""

from __future__ import annotations

import torch

from embedcache.heads.base import ProbeHead, TokenBatch, make_linear


class FrameLinearHead(ProbeHead):
    """One linear layer on each time step's frequency-pooled token (the mean of its real frequency tokens): logits
    [B, n_time, C] per step, trained on per-step strong labels (`probe --task sed`; post-processed by the run's
    median filter at prediction time).

    As a clip head, `forward` gives the mean of its frame logits, which by linearity is the layer on the clip's mean
    token. Parameters: D C + C.
    """

    kind = "frame_linear"
    gives_frames = True
    trains_on_frames = True

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        self.fc = make_linear(embed_dim, num_classes, True, generator)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        self._check_dim(batch)
        return self.fc(batch.mean)

    def frame_logits(self, batch: TokenBatch, n_freq: int) -> torch.Tensor:
        self._check_dim(batch)
        return self.fc(batch.step_mean(n_freq))
