"""Weight files: read any common format safely, load into a module loudly.

Used by every loader of pretrained or trained weights (HiFi-GAN, I3D, VGGish, AudioCLIP, the
run checkpoints of :mod:`mmldm.checkpoint`). Pickled code is never executed: ``.pt`` files go
through ``torch.load(weights_only=True)``; missing, unexpected and mis-shaped keys are reported.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mmldm.errors import MMLDMError

log = logging.getLogger(__name__)


class CheckpointError(MMLDMError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


def read_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a safetensors file, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def load_state_dict_file(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a weights file of any common format safely.

    ``.safetensors`` is read directly; ``.pt/.pth/.ckpt/.bin`` go through
    ``torch.load(weights_only=True)``, which refuses pickled code. ``key`` selects a nested
    dict (e.g. "state_dict" of Lightning checkpoints, "generator" of HiFi-GAN's).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            obj: Any = load_file(str(path))
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects other than tensors and "
                f"plain containers, and mmldm never executes pickled code "
                f"(torch.load weights_only=True said: {str(err).splitlines()[0]})"
            ) from None
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read weights ({err})") from None
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = ", ".join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: has no entry '{key}' (found: {found})")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a flat dict of tensors"
            + ("" if key else " (pass key= to select a nested state dict)")
        )
    return dict(obj)


@dataclass
class LoadReport:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "key: checkpoint (a, b) vs model (c, d)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        parts = []
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:limit]) + (
                    f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
                )
                parts.append(f"{len(keys)} {label}: {shown}")
        return "; ".join(parts) or "all keys match"


def upgrade_state_dict(
    state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """An older checkpoint in the module's current layout (``own``: its state dict): an
    empty tensor holds no weights and is dropped (the DiT's context tokens when there are
    none); a scalar loads into a one-element parameter (the contrastive head's logit scale,
    1-D since FSDP shards no scalars). Anything else passes unchanged, to be reported."""
    return {
        k: v.reshape(1) if k in own and v.dim() == 0 and tuple(own[k].shape) == (1,) else v
        for k, v in state_dict.items()
        if v.numel() or k in own
    }


def load_weights(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "checkpoint",
) -> LoadReport:
    """Load ``state_dict`` into ``module``, reporting missing, unexpected and mis-shaped keys.

    With ``strict`` any difference raises :class:`CheckpointError` naming the keys; otherwise the
    matching tensors are loaded and the differences are logged as warnings.
    """
    own = module.state_dict()
    state_dict = upgrade_state_dict(state_dict, own)
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    report = LoadReport(
        missing=sorted(set(own) - set(state_dict)),
        unexpected=sorted(set(state_dict) - set(own)),
        mismatched=mismatched,
    )
    name = type(module).__name__
    if not report.ok:
        message = f"loading {source} into {name}: {report.summary()}"
        if strict:
            raise CheckpointError(message)
        log.warning(message)
    compatible = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(compatible, strict=False)
    log.info("loaded %d tensors from %s into %s", len(compatible), source, name)
    return report
