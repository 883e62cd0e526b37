"""The latent cache: the dataset encoded once by the frozen VAE + autoencoder (paper's MM-LDM*),
so that training the generator never runs either of them. This module reads it and holds its
statistics; :mod:`mmldm.data.cache_latents` writes it.

Layout::

    LATENTS/
        meta.json                       the autoencoder's fingerprint, shapes, clip settings
        shard_00000.safetensors ...     z_a [n, C, h_a, w_a], z_v [n, C, h_v, w_v], label [n],
                                        index [n] (clip number); metadata: source paths, starts
        stats.json                      per-channel mean / std of z_a and z_v (docs/design.md §8.3)

Shard k holds clips [k * shard_size, (k + 1) * shard_size) of the dataset's clip list; process r
of w writes the shards with k % w == r. A shard is written atomically, so a killed run resumes
by skipping the shards that exist; a cache made by another autoencoder is refused.
Latents are posterior means (deterministic), stored in float32.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from mmldm.errors import MMLDMError

log = logging.getLogger(__name__)


class LatentCacheError(MMLDMError, ValueError):
    """A latent cache is missing, incomplete, or belongs to another autoencoder."""


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


@dataclass
class LatentStats:
    """Normalisation of latents to zero mean, unit variance per channel (docs/design.md §8.3)."""

    a_mean: torch.Tensor  # [C]
    a_std: torch.Tensor
    v_mean: torch.Tensor
    v_std: torch.Tensor

    @classmethod
    def from_json(cls, path: Path) -> LatentStats:
        s = json.loads(path.read_text())
        a, v = s["z_a"], s["z_v"]
        return cls(
            *(
                torch.tensor(x, dtype=torch.float32)
                for x in (a["mean"], a["std"], v["mean"], v["std"])
            )
        )

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> LatentStats:
        return cls(sd["a_mean"], sd["a_std"], sd["v_mean"], sd["v_std"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "a_mean": self.a_mean,
            "a_std": self.a_std,
            "v_mean": self.v_mean,
            "v_std": self.v_std,
        }

    @staticmethod
    def _view(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.device, like.dtype).view(1, -1, 1, 1)

    def normalize(self, z_a: torch.Tensor, z_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self._view
        return (z_a - v(self.a_mean, z_a)) / v(self.a_std, z_a), (z_v - v(self.v_mean, z_v)) / v(
            self.v_std, z_v
        )

    def denormalize(
        self, z_a: torch.Tensor, z_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = self._view
        return z_a * v(self.a_std, z_a) + v(self.a_mean, z_a), (
            z_v * v(self.v_std, z_v) + v(self.v_mean, z_v)
        )


class LatentDataset(Dataset):
    """Cached latents, normalised: items ``{"z_a", "z_v", "label", "prev_a", "prev_v",
    "has_prev"}``; prev_* is the clip that ends where this one starts in the same video
    (zeros and has_prev = False when there is none), for long generation."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "stats.json").is_file():
            raise LatentCacheError(
                f"{self.root}: not a finished latent cache (no stats.json); run cache-latents"
            )
        self.meta = json.loads((self.root / "meta.json").read_text())
        self.stats = LatentStats.from_json(self.root / "stats.json")
        za, zv, labels, sources, starts = [], [], [], [], []
        for k in range(-(-self.meta["num_clips"] // self.meta["shard_size"])):
            with safe_open(str(self.root / shard_name(k)), framework="pt") as fh:
                za.append(fh.get_tensor("z_a"))
                zv.append(fh.get_tensor("z_v"))
                labels.append(fh.get_tensor("label"))
                md = fh.metadata()
                sources += json.loads(md["sources"])
                starts += json.loads(md["starts"])
        self.z_a, self.z_v = self.stats.normalize(torch.cat(za), torch.cat(zv))
        self.labels = torch.cat(labels)
        clip = self.meta["data"]["num_frames"] / self.meta["data"]["fps"]
        where = {(s, round(t, 3)): i for i, (s, t) in enumerate(zip(sources, starts, strict=True))}
        self.prev = [
            where.get((s, round(t - clip, 3)), -1) for s, t in zip(sources, starts, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        p = self.prev[i]
        return {
            "z_a": self.z_a[i],
            "z_v": self.z_v[i],
            "label": self.labels[i],
            "prev_a": self.z_a[p] if p >= 0 else torch.zeros_like(self.z_a[i]),
            "prev_v": self.z_v[p] if p >= 0 else torch.zeros_like(self.z_v[i]),
            "has_prev": torch.tensor(p >= 0),
        }
