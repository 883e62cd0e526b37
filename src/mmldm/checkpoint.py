"""Checkpoints: safetensors weights with the resolved config embedded, training state beside them.

Layout of a run's checkpoints::

    RUN/checkpoints/step_00001000/
        weights.safetensors    every module's tensors, keys "<module>.<param>", plus metadata:
                               mmldm.kind, mmldm.step, mmldm.config (JSON), mmldm.version
        training_state.pt      optimiser / scheduler states, RNG states, counters
                               (plain tensors and containers: loaded with weights_only=True)

A checkpoint directory is written under a temporary name and renamed into place, so a process
killed mid-write never leaves a half checkpoint that looks complete: the latest checkpoint is the
highest ``step_*`` directory, and temporary directories are ignored and cleaned up later.

``weights.safetensors`` alone is an inference checkpoint: it holds the config that built the
model, so sampling needs nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmldm import __version__
from mmldm.config import Config, config_from_dict, config_to_dict
from mmldm.model_folder import WEIGHTS_FILE as COMPONENT_FILE
from mmldm.weights import CheckpointError, read_metadata

log = logging.getLogger(__name__)

# 2: the DiT's 2-D positions in DiT's layout (columns in the first half of the channels);
# format 1 put the rows there, so a format-1 generator is refused (see load_checkpoint).
FORMAT_VERSION = "2"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "training_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------------------------
# RNG state (exact resume)
# --------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch (CPU and every CUDA device), as plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global RNG)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global RNG is what other code draws from)
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _state_dict(module: torch.nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return module.state_dict() if isinstance(module, torch.nn.Module) else module


def flatten_modules(
    modules: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """{"model": net, "ema": ema_net} -> {"model.w": ..., "ema.w": ...} on CPU, contiguous.

    Tensors are copied, so that tied or shared storages (which safetensors refuses) and later
    in-place updates of the live model cannot reach the saved copy.
    """
    flat: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if "." in name:
            raise ValueError(f"module name {name!r} must not contain '.'")
        for key, tensor in _state_dict(module).items():
            flat[f"{name}.{key}"] = tensor.detach().to("cpu", copy=True).contiguous()
    return flat


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_weights(
    path: str | Path,
    modules: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    config: Config,
    *,
    kind: str,
    step: int,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Write one safetensors file with the config embedded in its metadata (not atomic)."""
    metadata = {
        "format": "pt",
        "mmldm.format": FORMAT_VERSION,
        "mmldm.version": __version__,
        "mmldm.kind": kind,
        "mmldm.step": str(step),
        "mmldm.config": json.dumps(config_to_dict(config)),
        # trainable + frozen parameters of each nn.Module (buffers excluded), for `mmldm info`
        "mmldm.parameters": json.dumps(
            {
                name: sum(p.numel() for p in module.parameters())
                for name, module in modules.items()
                if isinstance(module, torch.nn.Module)
            }
        ),
    }
    metadata.update(extra_metadata or {})
    save_file(flatten_modules(modules), str(path), metadata=metadata)


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(
    checkpoint_root: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    config: Config,
    kind: str,
    step: int,
    training_state: Mapping[str, Any] | None = None,
    extra_metadata: Mapping[str, str] | None = None,
    keep_last: int = 0,
) -> Path:
    """Atomically write ``checkpoint_root/step_XXXXXXXX`` and prune old checkpoints.

    Args:
        checkpoint_root: the run's ``checkpoints/`` folder (created when missing).
        modules: named modules or state dicts, e.g. ``{"model": net, "ema": ema}``.
        config: the resolved config, embedded in the weights file.
        kind: what the checkpoint holds ("autoencoder", "generator", "vae", ...).
        step: the training step (optimizer updates done so far).
        training_state: optimizer / scheduler states, RNG states, counters; tensors and plain
            Python containers only (it is read back with ``weights_only=True``).
        keep_last: keep only this many newest checkpoints (0 keeps all).

    Returns:
        The final checkpoint directory.
    """
    root = Path(checkpoint_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        weights = tmp / WEIGHTS_FILE
        write_weights(weights, modules, config, kind=kind, step=step, extra_metadata=extra_metadata)
        _fsync_file(weights)
        if training_state is not None:
            state_path = tmp / STATE_FILE
            torch.save({"step": step, **training_state}, state_path)
            _fsync_file(state_path)
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (after a resume): move the old one out of the way
            old = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)  # the commit point: atomic on POSIX file systems
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s", final)
    _prune(root, keep_last, keep=final)
    return final


def list_checkpoints(checkpoint_root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints below ``checkpoint_root`` as (step, dir), oldest first."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / WEIGHTS_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    for child in root.iterdir():  # leftovers of writes that were killed
        if child.name.startswith((".tmp-", ".old-")) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(root)[:-keep_last]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a run folder (-> its latest checkpoint), a checkpoint folder, a model folder's
    component folder or a weights file.

    Returns the path of the ``weights.safetensors`` (or other .safetensors) file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: not an mmldm checkpoint (expected a .safetensors file, a checkpoint "
                "folder or a run folder); foreign .pt/.ckpt weights load with load_state_dict_file"
            )
        return path
    for name in (WEIGHTS_FILE, COMPONENT_FILE):
        if (path / name).is_file():
            return path / name
    for root in (path / "checkpoints", path):
        found = list_checkpoints(root)
        if found:
            return found[-1][1] / WEIGHTS_FILE
    raise CheckpointError(f"{path}: no checkpoint in this folder (looked for {WEIGHTS_FILE})")


def checkpoint_fingerprint(path: str | Path) -> str:
    """Identifies a checkpoint (run, folder or weights file) by content: its safetensors
    header (names, shapes, offsets, the embedded config and step) and the last MiB of its
    tensor data."""
    weights = resolve_checkpoint(path)
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        digest.update(fh.read(n))
        size = weights.stat().st_size
        fh.seek(max(8 + n, size - 2**20))
        digest.update(fh.read())
    return digest.hexdigest()[:32]


def check_made_from(
    ckpt: Checkpoint, autoencoder: str | Path, found: str | None = None, made: str = "trained"
) -> str:
    """Refuse a generator or distilled checkpoint unless it was made from ``autoencoder`` (a
    run, checkpoint or weights file; ``found``: its fingerprint when already known): its
    latents, encoders and VAE are the only ones it reads. Returns that fingerprint."""
    expected = ckpt.metadata.get("mmldm.autoencoder_fingerprint")
    found = found or checkpoint_fingerprint(autoencoder)
    # a distilled checkpoint always names its teacher; generators before 0.2 may not
    if (expected or made == "distilled") and expected != found:
        what = "distilled from" if made == "distilled" else "trained on the latents of"
        raise CheckpointError(
            f"{ckpt.path} was {what} {ckpt.metadata.get('mmldm.autoencoder')} (fingerprint "
            f"{expected}), not {autoencoder} ({found})"
        )
    return found


@dataclass
class Checkpoint:
    """A loaded mmldm checkpoint. ``tensors`` holds every module's weights, keys prefixed."""

    path: Path  # the weights file
    kind: str
    step: int
    config: Config
    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def modules(self) -> list[str]:
        return sorted({key.split(".", 1)[0] for key in self.tensors})

    def state_dict(self, module: str) -> dict[str, torch.Tensor]:
        """The state dict of one saved module (prefix removed)."""
        prefix = module + "."
        sd = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        if not sd:
            raise CheckpointError(
                f"{self.path}: has no module '{module}' (it holds: {', '.join(self.modules)})"
            )
        return sd

    def training_state(self) -> dict[str, Any] | None:
        """Optimizer / RNG state saved beside the weights, or None for inference checkpoints."""
        state_path = self.path.parent / STATE_FILE
        if not state_path.is_file():
            return None
        return torch.load(state_path, map_location="cpu", weights_only=True)


def load_checkpoint(
    path: str | Path, *, kind: str | None = None, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Load an mmldm checkpoint (run folder, checkpoint folder or weights file).

    Args:
        kind: when given, fail unless the checkpoint holds this kind (e.g. "generator").
    """
    weights = resolve_checkpoint(path)
    meta = read_metadata(weights)
    if "mmldm.config" not in meta:
        raise CheckpointError(
            f"{weights}: safetensors file without an mmldm config; load plain weights with "
            "load_state_dict_file"
        )
    found_kind = meta.get("mmldm.kind", "?")
    if kind is not None and found_kind != kind:
        raise CheckpointError(f"{weights}: is a '{found_kind}' checkpoint, expected '{kind}'")
    if found_kind == "generator" and meta.get("mmldm.format", "1") == "1":
        raise CheckpointError(
            f"{weights}: a generator of checkpoint format 1 (mmldm "
            f"{meta.get('mmldm.version', '?')}), whose DiT put the rows of its 2-D positions "
            "where DiT puts the columns; this version uses DiT's layout, so the generator "
            "would see its tokens transposed. Train it again (train-generator on the same "
            "latent cache); the autoencoder checkpoints still load."
        )
    config = config_from_dict(
        json.loads(meta["mmldm.config"]), source=f"config stored in {weights}"
    )
    tensors = load_file(str(weights), device=str(map_location))
    return Checkpoint(
        path=weights,
        kind=found_kind,
        step=int(meta.get("mmldm.step", 0)),
        config=config,
        metadata=meta,
        tensors=tensors,
    )


def summarize_checkpoint(path: str | Path) -> dict[str, Any]:
    """What ``mmldm info`` prints, read from the metadata and tensor headers only."""
    weights = resolve_checkpoint(path)
    meta = read_metadata(weights)
    groups: dict[str, int] = {}
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():
            numel = int(np.prod(fh.get_slice(key).get_shape()))
            parts = key.split(".")
            for depth in (1, 2):
                if len(parts) > depth:
                    name = ".".join(parts[:depth])
                    groups[name] = groups.get(name, 0) + numel
    return {
        "path": weights,
        "kind": meta.get("mmldm.kind", "?"),
        "step": int(meta.get("mmldm.step", 0)),
        "version": meta.get("mmldm.version", "?"),
        "format": meta.get("mmldm.format", "?"),
        "bytes": weights.stat().st_size,
        "parameters": json.loads(meta.get("mmldm.parameters", "{}")),
        "tensor_elements": groups,
        "training_state": (weights.parent / STATE_FILE).is_file(),
        "config": json.loads(meta["mmldm.config"]) if "mmldm.config" in meta else None,
    }
