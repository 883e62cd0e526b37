"""Building blocks shared by the encoders, projectors and the discriminator.

Tensors are ``[N, C, H, W]`` for 2-D blocks; sequences of slots (a content slot and key
frames, or a triplet of images) are ``[B, T, C, H, W]`` and 2-D blocks see them as ``[B*T, ...]``.
All attention uses ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the width allows it (tiny configs use fewer)."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[N]`` scalars -> ``[N, dim]`` sin-cos features (DDPM / transformer positions)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device) / half)
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """Pre-norm residual block: (GN, SiLU, conv3x3) x 2, an optional per-sample embedding added
    between them, and a 1x1 skip when the width changes. ``[N, Cin, H, W] -> [N, Cout, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over a token axis: ``[N, L, C] -> [N, L, C]`` (residual)."""

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(
            self.qkv(self.norm(x)), "n l (three h d) -> three n h l d", three=3, h=self.heads
        )
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(h, "n h l d -> n l (h d)"))


class SpatialAttention(Attention):
    """Attention among the H*W positions of each image: ``[N, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        tokens = rearrange(x, "n c h w -> n (h w) c")
        return rearrange(super().forward(tokens), "n (h w) c -> n c h w", h=h, w=w)


class TemporalAttention(Attention):
    """Attention among the T slots at each position: ``[B, T, C, H, W]``, with learned slot
    positions so that the content slot and each key frame are told apart."""

    def __init__(self, channels: int, head_channels: int, max_slots: int) -> None:
        super().__init__(channels, head_channels)
        self.slot_pos = nn.Parameter(torch.zeros(max_slots, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, t, c, h, w = x.shape
        tokens = rearrange(x, "b t c h w -> (b h w) t c") + self.slot_pos[:t]
        out = super().forward(tokens)
        return rearrange(out, "(b h w) t c -> b t c h w", b=b, h=h, w=w)


class FullAttention(Attention):
    """Attention among all positions of all slots (cross-slot): ``[B, T, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, t, c, h, w = x.shape
        tokens = rearrange(x, "b t c h w -> b (t h w) c")
        return rearrange(super().forward(tokens), "b (t h w) c -> b t c h w", t=t, h=h, w=w)


class Downsample(nn.Module):
    """Strided 3x3 convolution, halving H and W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def per_slot(module: nn.Module, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every slot of ``[B, T, C, H, W]``."""
    b = x.shape[0]
    out = module(rearrange(x, "b t c h w -> (b t) c h w"), *args)
    return rearrange(out, "(b t) c h w -> b t c h w", b=b)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters (used only on the LAST layer of a conditioning path, so that
    it starts as a no-op and still passes gradients to everything before it;
    docs/design.md §8.1)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
