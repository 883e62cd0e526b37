"""Heads on the shared semantic space: classification of the pair, and CLIP-style contrast.

Both take s_a, s_v ``[B, D, s, s]``. The contrastive loss is the paper's eq. 1: a symmetric
InfoNCE over the batch with a learnable temperature (CLIP; init 0.07), computed against the
features of every process so that a multi-GPU run sees the same negatives as one large batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class ClassificationHead(nn.Module):
    """(s_a, s_v) -> class logits ``[B, num_classes]``."""

    def __init__(self, semantic_dim: int, semantic_size: int, num_classes: int) -> None:
        super().__init__()
        features = 2 * semantic_dim * semantic_size**2
        hidden = min(1024, max(64, semantic_dim))
        self.net = nn.Sequential(
            nn.LayerNorm(features),
            nn.Linear(features, hidden),
            nn.SiLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, s_a: torch.Tensor, s_v: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s_a.flatten(1), s_v.flatten(1)], dim=1))


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of the gathered tensor and
    returns this process's slice (each process computes the loss over the global batch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), len(x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[B, ...]`` from every process (same B on each); gradients flow back
    to the local part."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class ContrastiveHead(nn.Module):
    """Maps s_a and s_v to unit vectors ``[B, dim]`` and scores matched pairs (eq. 1)."""

    def __init__(
        self, semantic_dim: int, semantic_size: int, dim: int, temperature_init: float
    ) -> None:
        super().__init__()
        features = semantic_dim * semantic_size**2
        self.audio = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, dim))
        self.video = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, dim))
        # shape [1], not a scalar: FSDP shards no scalar parameters
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / temperature_init)]))

    def embed(self, s_a: torch.Tensor, s_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.normalize(self.audio(s_a.flatten(1)), dim=-1)
        v = F.normalize(self.video(s_v.flatten(1)), dim=-1)
        return a, v

    def loss(self, s_a: torch.Tensor, s_v: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE; positives are the pairs of the same index across all processes."""
        a, v = self.embed(s_a, s_v)
        a, v = gather_with_grad(a), gather_with_grad(v)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()  # CLIP caps tau at 1/100
        logits = scale * a @ v.T  # [N, N], N = global batch
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
