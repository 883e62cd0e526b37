"""Stage 2: the multi-modal DiT (paper sec. 3.2-3.3, docs/design.md §5).

Token sequence (patch size 1 in the paper)::

    [context (optional) | previous clip (long)
     | EOS_a | audio tokens (z_a: 8x8 = 64) | EOS_v | video tokens (z_v: 16x16 = 256)]

Each modality's tokens get fixed 2-D sin-cos positions and a learnable modality embedding. Blocks
are DiT's adaLN-Zero blocks (LayerNorm without affine, eps 1e-6; SDPA attention; MLP ratio 4
with tanh-GELU), conditioned on the timestep (and optionally a class). Separate zero-initialised
final layers give the prediction for audio and for video (eps or v: the diffusion settings
decide which target it is trained on; the network is the same).

Conditional generation (sec. 3.3): the clean latent of the given modality enters through a
zero-initialised linear added to that modality's input tokens (zeros = unconditional).

Long generation / continuation: a second branch of half depth reads [previous clip's latents |
current noisy tokens] and adds its block outputs into the main blocks through zero-initialised
linears; the previous latents also enter the main sequence as context tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmldm.models.blocks import sinusoidal_embedding


@dataclass(frozen=True)
class MultiModalDiTConfig:
    """Everything the DiT network needs (the experiment's ``dit`` section composes it).

    The paper's: z_a 16 x 8 x 8, z_v 16 x 16 x 16, DiT-XL/1 (width 1152, depth 28, 16 heads).
    """

    audio_shape: tuple[int, int, int]  # C x H x W of z_a
    video_shape: tuple[int, int, int]  # C x H x W of z_v
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    num_context_tokens: int  # learned constant tokens in front of the sequence
    num_classes: int  # > 0: a label embedding with one more row for the null class
    # > 0: the last len(key_frames) * frame_channels channels of z_v are one group per key
    # frame, each given one token (instead of entering the spatial tokens)
    frame_channels: int
    key_frames: tuple[int, ...]
    long: bool  # a second branch that reads the previous clip (long / continuation)
    long_depth: int  # its depth; 0 = depth // 2


def sincos_2d(
    dim: int, height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Fixed 2-D sin-cos positions ``[height * width, dim]`` of a row-major grid of tokens, in
    DiT's and MAE's layout: the first half of the channels encodes the column (x), the second
    half the row (y), each as [sin | cos] of position x 1 / 10000^(2k / (dim / 2))."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )

    def one_axis(pos: torch.Tensor, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, device=device, dtype=torch.float32) / (d / 2))
        out = pos.reshape(-1)[:, None] * omega[None]  # [L, d / 2]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_axis(xs, dim // 2), one_axis(ys, dim // 2)], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        return self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)"))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: ``[B, L, D]`` conditioned on ``c [B, D]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    """adaLN + linear to patch values: ``[B, L, D] -> [B, L, p*p*C]``."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class ModalityTokens(nn.Module):
    """Latent ``[B, C, H, W]`` <-> tokens ``[B, H*W/p^2, D]`` with positions and a modality
    embedding; also the zero-initialised embedding of a conditioning latent.

    With ``frame_channels`` N > 0 (``dit.frame_tokens``, for an autoencoder whose z_v ends in
    one group of N channels per key frame), the first ``C - K N`` channels give the spatial
    tokens and each key frame's group one more token (its N x H x W values, a 1-D sin-cos
    position at the frame's index): ``[B, H*W/p^2 + K, D]``, so that attention runs between
    the frames of the clip and, across modalities, between frames and the audio.
    """

    def __init__(
        self,
        channels: int,
        size: int,
        patch: int,
        dim: int,
        frame_channels: int = 0,
        frame_times: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.patch, self.size = patch, size
        self.frame_channels = frame_channels
        self.num_frames = len(frame_times) if frame_channels else 0
        self.channels = channels - self.num_frames * frame_channels  # per position
        grid = size // patch
        self.embed = nn.Linear(self.channels * patch * patch, dim)
        # zero-initialised (sec. 3.3) and without bias, so that a zero condition adds exactly
        # nothing: the unconditional model is the conditional one with zeros
        self.cond = nn.Linear(self.channels * patch * patch, dim, bias=False)
        self.dim, self.grid = dim, grid
        self.modality = nn.Parameter(torch.zeros(1, 1, dim))
        if self.num_frames:
            values = frame_channels * size * size
            self.frame_embed = nn.Linear(values, dim)
            self.frame_cond = nn.Linear(values, dim, bias=False)
            self.frame_times = tuple(frame_times)

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> spatial patches ``[B, L, p*p*C']`` of the first C' channels."""
        p = self.patch
        return rearrange(z[:, : self.channels], "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def frames(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> the key frames' groups ``[B, K, N*H*W]``."""
        return z[:, self.channels :].unflatten(1, (self.num_frames, -1)).flatten(2)

    def unpatchify(self, tokens: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Spatial patches ``[B, L, p*p*C']`` (and frame groups ``[B, K, N*H*W]``) -> latent."""
        p, g = self.patch, self.size // self.patch
        z = rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=g, w=g, p=p, q=p)
        if frames is None:
            return z
        groups = frames.unflatten(2, (self.frame_channels, self.size, self.size)).flatten(1, 2)
        return torch.cat([z, groups], dim=1)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # Fixed positions are computed here, on z's device, rather than kept as buffers: a model
        # built on the meta device (or moved with to_empty) has no values in its buffers.
        pos = sincos_2d(self.dim, self.grid, self.grid, z.device).to(z.dtype)
        x = self.embed(self.patchify(z)) + pos + self.modality
        if cond is not None:
            x = x + self.cond(self.patchify(cond))
        if not self.num_frames:
            return x
        times = torch.tensor(self.frame_times, device=z.device, dtype=torch.float32)
        frame_pos = sinusoidal_embedding(times, self.dim).to(z.dtype)  # [K, dim]
        f = self.frame_embed(self.frames(z)) + frame_pos + self.modality
        if cond is not None:
            f = f + self.frame_cond(self.frames(cond))
        return torch.cat([x, f], dim=1)

    @property
    def num_spatial(self) -> int:
        return (self.size // self.patch) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_spatial + self.num_frames


@dataclass
class DiTInputs:
    """One call of the DiT. Conditions and previous latents are zeros where absent."""

    z_a: torch.Tensor  # [B, C, Ha, Wa] noisy audio latent
    z_v: torch.Tensor  # [B, C, Hv, Wv] noisy video latent
    t: torch.Tensor  # [B] integer timesteps
    cond_a: torch.Tensor | None = None  # [B, C, Ha, Wa] clean audio latent (a2v), or zeros
    cond_v: torch.Tensor | None = None  # [B, C, Hv, Wv] clean video latent (v2a), or zeros
    labels: torch.Tensor | None = None  # [B] class (class_conditional), num_classes = null
    prev_a: torch.Tensor | None = None  # [B, C, Ha, Wa] previous clip (long), zeros = dropped
    prev_v: torch.Tensor | None = None  # [B, C, Hv, Wv]


class MultiModalDiT(nn.Module):
    """The prediction (eps or v) for (z_a, z_v) jointly: ``DiTInputs -> (out_a, out_v)``,
    each shaped like its latent."""

    def __init__(self, config: MultiModalDiTConfig, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        d = self.config = config
        # training: each block's activations are recomputed in the backward instead of kept
        self.gradient_checkpointing = gradient_checkpointing
        c_a, s_a, _ = d.audio_shape
        c_v, s_v, _ = d.video_shape
        dim = d.hidden_size
        frames = (d.frame_channels, tuple(d.key_frames))
        self.audio = ModalityTokens(c_a, s_a, d.patch_size, dim)
        self.video = ModalityTokens(c_v, s_v, d.patch_size, dim, *frames)
        self.eos_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.eos_v = nn.Parameter(torch.zeros(1, 1, dim))
        # None without context tokens: an empty parameter would break FSDP's sharding
        self.context = (
            nn.Parameter(torch.zeros(1, d.num_context_tokens, dim))
            if d.num_context_tokens
            else None
        )
        self.t_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.num_classes = d.num_classes
        # one extra row: the null class that class dropout (and unconditional sampling) uses
        self.y_embed = nn.Embedding(self.num_classes + 1, dim) if self.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(dim, d.num_heads, d.mlp_ratio) for _ in range(d.depth))
        self.final_a = FinalLayer(dim, c_a * d.patch_size**2)
        self.final_v = FinalLayer(dim, self.video.channels * d.patch_size**2)
        self.final_frames = (
            FinalLayer(dim, d.frame_channels * s_v * s_v) if self.video.num_frames else None
        )
        self.long = d.long
        if d.long:
            depth = d.long_depth or max(1, d.depth // 2)
            self.prev_audio = ModalityTokens(c_a, s_a, d.patch_size, dim)
            self.prev_video = ModalityTokens(c_v, s_v, d.patch_size, dim, *frames)
            self.branch = nn.ModuleList(
                DiTBlock(dim, d.num_heads, d.mlp_ratio) for _ in range(depth)
            )
            self.branch_out = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
            self.stride = max(1, d.depth // depth)  # branch block j feeds main block j*stride
        self.initialize_weights()

    # -- initialisation, all in one place (DiT's scheme) --------------------------------------

    def initialize_weights(self) -> None:
        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        for tokens in self._token_modules():
            w = tokens.embed.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.normal_(tokens.modality, std=0.02)
            nn.init.zeros_(tokens.cond.weight)  # conditions start as a no-op (sec. 3.3)
            if tokens.num_frames:
                nn.init.zeros_(tokens.frame_cond.weight)
        for p in (self.eos_a, self.eos_v, self.context):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.weight, std=0.02)
        for block in [*self.blocks, *(self.branch if self.long else [])]:
            nn.init.zeros_(block.ada[-1].weight)  # adaLN-Zero: every block starts as identity
            nn.init.zeros_(block.ada[-1].bias)
        finals = [self.final_a, self.final_v, self.final_frames]
        for final in (f for f in finals if f is not None):
            nn.init.zeros_(final.ada[-1].weight)
            nn.init.zeros_(final.ada[-1].bias)
            nn.init.zeros_(final.linear.weight)
            nn.init.zeros_(final.linear.bias)
        if self.long:
            for layer in self.branch_out:  # the branch starts as a no-op on the main DiT
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _token_modules(self) -> list[ModalityTokens]:
        mods = [self.audio, self.video]
        return [*mods, self.prev_audio, self.prev_video] if self.long else mods

    # -- forward -------------------------------------------------------------------------------

    def condition(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        c = self.t_embed(sinusoidal_embedding(t, 256).to(self.eos_a.dtype))
        if self.y_embed is not None:
            if labels is None:
                labels = torch.full_like(t, self.num_classes)  # the null class
            c = c + self.y_embed(labels.clamp(min=0, max=self.num_classes))
        return c

    def _run(self, block: DiTBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, c, use_reentrant=False)
        return block(x, c)

    def forward(self, inp: DiTInputs) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(inp.z_a)
        c = self.condition(inp.t, inp.labels)
        audio = self.audio(inp.z_a, inp.cond_a)  # [B, La, D]
        video = self.video(inp.z_v, inp.cond_v)  # [B, Lv, D]
        current = torch.cat(
            [self.eos_a.expand(b, -1, -1), audio, self.eos_v.expand(b, -1, -1), video], dim=1
        )
        prefix = [] if self.context is None else [self.context.expand(b, -1, -1)]
        branch_feats: list[torch.Tensor] = []
        if self.long:
            prev_a = inp.prev_a if inp.prev_a is not None else torch.zeros_like(inp.z_a)
            prev_v = inp.prev_v if inp.prev_v is not None else torch.zeros_like(inp.z_v)
            prev = torch.cat([self.prev_audio(prev_a), self.prev_video(prev_v)], dim=1)
            prefix.append(prev)  # the previous clip as context tokens of the main sequence
            h = torch.cat([prev, current], dim=1)  # the branch reads [previous | current]
            for block, out in zip(self.branch, self.branch_out, strict=True):
                h = self._run(block, h, c)
                branch_feats.append(out(h[:, prev.shape[1] :]))
        n_prefix = sum(p.shape[1] for p in prefix)
        x = torch.cat([*prefix, current], dim=1)
        for i, block in enumerate(self.blocks):
            if branch_feats and i % self.stride == 0 and i // self.stride < len(branch_feats):
                x = torch.cat(
                    [x[:, :n_prefix], x[:, n_prefix:] + branch_feats[i // self.stride]], dim=1
                )
            x = self._run(block, x, c)
        x = x[:, n_prefix:]
        la, lv = self.audio.num_tokens, self.video.num_spatial
        tok_a, tok_v = x[:, 1 : 1 + la], x[:, 2 + la :]  # skip EOS_a and EOS_v
        out_a = self.audio.unpatchify(self.final_a(tok_a, c))
        frames = self.final_frames(tok_v[:, lv:], c) if self.final_frames is not None else None
        out_v = self.video.unpatchify(self.final_v(tok_v[:, :lv], c), frames)
        return out_a, out_v
