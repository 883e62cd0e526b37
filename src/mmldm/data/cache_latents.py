"""Writing a latent cache (:mod:`mmldm.data.latents` has its layout): every clip of a dataset
encoded once by the frozen VAE + autoencoder (``mmldm cache-latents``), in shards that N
processes write side by side and a killed run skips on its next start; the per-channel
statistics are computed when the last shard exists."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Subset

from mmldm.checkpoint import checkpoint_fingerprint
from mmldm.codec import Codec
from mmldm.config import config_to_dict
from mmldm.console import progress
from mmldm.data.dataset import SoundingVideoDataset
from mmldm.data.latents import LatentCacheError, shard_name
from mmldm.data.media import write_json
from mmldm.errors import MMLDMError

log = logging.getLogger(__name__)


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
    write_json(out / "stats.json", stats)  # atomic: the last processes may both get here
    log.info(
        "%s: %d clips; z_a std %s, z_v std %s",
        out,
        count,
        [round(v, 3) for v in stats["z_a"]["std"]][:4],
        [round(v, 3) for v in stats["z_v"]["std"]][:4],
    )
    return stats


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
    overrides: Sequence[str] = (),
) -> Path:
    """Encode every clip of ``data`` with the autoencoder of ``autoencoder`` into ``out``
    (``overrides``: runtime settings of its config, e.g. ``data.num_workers=8``)."""
    out = Path(out)
    # encodes only: no distilled decoders
    codec = Codec.load(autoencoder, device=device, folder_decoders=False, overrides=overrides)
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
        tensors, sources, starts = _encode_shard(codec, dataset, idx, batch_size, device)
        write_shard(out / shard_name(k), tensors, sources, starts)
    if all((out / shard_name(k)).is_file() for k in range(n_shards)):
        finalize_stats(out)
    return out


def _as_list(items: list[dict]) -> list[dict]:
    return items


def _rethrown(loader: DataLoader) -> Iterator[list[dict]]:
    """The loader's batches; a user error raised in a loader process comes back with that
    process's traceback in its message: it is raised again with its own one line."""
    try:
        yield from loader
    except MMLDMError as err:
        lines = str(err).strip().splitlines()  # [..., "mmldm....DatasetError: <message>"]
        if len(lines) == 1:  # raised in this process
            raise
        raise type(err)(lines[-1].split(": ", 1)[-1]) from None


def _encode_shard(
    codec: Codec, dataset: SoundingVideoDataset, idx: list[int], batch_size: int, device: str
) -> tuple[dict[str, torch.Tensor], list[str], list[float]]:
    """Clips ``idx`` of ``dataset`` encoded in batches: (``{"z_a" [n, C, h_a, w_a], "z_v",
    "label" [n], "index" [n]}`` in float32 / long on the CPU, source paths, start seconds)."""
    za, zv, labels, sources, starts = [], [], [], [], []
    # decoding the clips is most of the work: data.num_workers processes decode the next
    # batches while this one encodes (in order: the shard is the same for any count)
    loader = DataLoader(
        Subset(dataset, idx),
        batch_size=batch_size,
        num_workers=codec.cfg.data.num_workers,
        collate_fn=_as_list,
    )
    for items in _rethrown(loader):
        video = torch.stack([it["video"] for it in items]).to(device)
        audio = torch.stack([it["audio"] for it in items]).to(device)
        z_a, z_v = codec.encode(video, audio)
        za.append(z_a.float().cpu())
        zv.append(z_v.float().cpu())
        labels += [int(it["label"]) for it in items]
        sources += [it["path"] for it in items]
        starts += [float(it["start"]) for it in items]
    tensors = {
        "z_a": torch.cat(za),
        "z_v": torch.cat(zv),
        "label": torch.tensor(labels, dtype=torch.long),
        "index": torch.tensor(idx, dtype=torch.long),
    }
    return tensors, sources, starts
