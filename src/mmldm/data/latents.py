"""The latent cache: the dataset encoded once by the frozen VAE + autoencoder (paper's MM-LDM*),
so that training the generator never runs either of them.

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
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from mmldm.checkpoint import checkpoint_fingerprint
from mmldm.codec import Codec, LatentStats
from mmldm.console import progress

log = logging.getLogger(__name__)


class LatentCacheError(ValueError):
    """A latent cache is missing, incomplete, or belongs to another autoencoder."""


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def write_shard(
    path: Path, tensors: dict[str, torch.Tensor], sources: list[str], starts: list[float]
) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    save_file(
        {k: v.contiguous().cpu() for k, v in tensors.items()},
        str(tmp),
        metadata={"sources": json.dumps(sources), "starts": json.dumps(starts)},
    )
    os.replace(tmp, path)


def prepare_cache(out: Path, meta: dict) -> None:
    """Create ``out/meta.json`` or check that an existing cache was made the same way."""
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("autoencoder_fingerprint") != meta["autoencoder_fingerprint"]:
            raise LatentCacheError(
                f"{out}: holds latents of another autoencoder ({old.get('autoencoder')}, "
                f"fingerprint {old.get('autoencoder_fingerprint')}); refusing to mix them with "
                f"{meta['autoencoder']} ({meta['autoencoder_fingerprint']}): use a new folder"
            )
        for key in ("num_clips", "shard_size", "data"):
            if old.get(key) != meta.get(key):
                raise LatentCacheError(
                    f"{out}: was made with {key}={old.get(key)}, now {meta.get(key)}; "
                    "use a new folder"
                )
        return
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)


def finalize_stats(out: Path) -> dict:
    """Per-channel mean and std over every cached clip (after all shards exist)."""
    meta = json.loads((out / "meta.json").read_text())
    n_shards = -(-meta["num_clips"] // meta["shard_size"])
    missing = [k for k in range(n_shards) if not (out / shard_name(k)).is_file()]
    if missing:
        raise LatentCacheError(f"{out}: shards {missing[:5]}... missing; run cache-latents again")
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for k in range(n_shards):
        with safe_open(str(out / shard_name(k)), framework="pt") as fh:
            for key in ("z_a", "z_v"):
                z = fh.get_tensor(key).double()
                dims = (0, 2, 3)
                s1, s2 = z.sum(dims), z.pow(2).sum(dims)
                n = z.numel() // z.shape[1]
                sums[key + "1"] = sums.get(key + "1", 0) + s1
                sums[key + "2"] = sums.get(key + "2", 0) + s2
                sums[key + "n"] = sums.get(key + "n", 0) + n
            count += fh.get_tensor("label").numel()
    stats = {"num_clips": count}
    for key in ("z_a", "z_v"):
        n = sums[key + "n"]
        mean = sums[key + "1"] / n
        std = (sums[key + "2"] / n - mean**2).clamp(min=1e-12).sqrt()
        stats[key] = {"mean": mean.tolist(), "std": std.tolist()}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    log.info(
        "%s: %d clips; z_a std %s, z_v std %s",
        out,
        count,
        [round(v, 3) for v in stats["z_a"]["std"]][:4],
        [round(v, 3) for v in stats["z_v"]["std"]][:4],
    )
    return stats


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


def cache_latents(
    autoencoder: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    device: str = "cpu",
    batch_size: int = 16,
    shard_size: int = 256,
    rank: int = 0,
    world: int = 1,
    cache_dir: str | Path | None = None,
) -> Path:
    """Encode every clip of ``data`` with the autoencoder of ``autoencoder`` into ``out``."""
    from mmldm.config import config_to_dict
    from mmldm.data.dataset import SoundingVideoDataset

    out = Path(out)
    codec = Codec.load(autoencoder, device=device)
    cfg = codec.cfg
    dataset = SoundingVideoDataset(data, cfg.data, cache_dir=cache_dir)
    meta = {
        "autoencoder": str(autoencoder),
        "autoencoder_fingerprint": checkpoint_fingerprint(autoencoder),
        "num_clips": len(dataset),
        "shard_size": shard_size,
        "data": {k: v for k, v in config_to_dict(cfg)["data"].items() if k != "num_workers"},
        "z_a_shape": list(cfg.audio_latent_shape),
        "z_v_shape": list(cfg.video_latent_shape),
        "classes": dataset.classes,
        "source": str(data),
    }
    if rank == 0:
        prepare_cache(out, meta)
    else:  # the others wait for rank 0's meta.json, then check it
        while not (out / "meta.json").is_file():
            import time

            time.sleep(0.2)
        prepare_cache(out, meta)
    n_shards = -(-len(dataset) // shard_size)
    mine = [k for k in range(n_shards) if k % world == rank]
    todo = [k for k in mine if not (out / shard_name(k)).is_file()]
    log.info(
        "%s: %d of %d shards to encode (process %d of %d)", out, len(todo), len(mine), rank, world
    )
    for k in progress(todo, desc="encoding latents"):
        idx = list(range(k * shard_size, min(len(dataset), (k + 1) * shard_size)))
        za, zv, labels, sources, starts = [], [], [], [], []
        for b in range(0, len(idx), batch_size):
            items = [dataset[i] for i in idx[b : b + batch_size]]
            video = torch.stack([it["video"] for it in items]).to(device)
            audio = torch.stack([it["audio"] for it in items]).to(device)
            z_a, z_v = codec.encode(video, audio)
            za.append(z_a.float().cpu())
            zv.append(z_v.float().cpu())
            labels += [int(it["label"]) for it in items]
            sources += [it["path"] for it in items]
            starts += [float(it["start"]) for it in items]
        write_shard(
            out / shard_name(k),
            {
                "z_a": torch.cat(za),
                "z_v": torch.cat(zv),
                "label": torch.tensor(labels, dtype=torch.long),
                "index": torch.tensor(idx, dtype=torch.long),
            },
            sources,
            starts,
        )
    if all((out / shard_name(k)).is_file() for k in range(n_shards)):
        finalize_stats(out)
    return out
