"""I3D (Inception-v1 inflated to 3-D, Kinetics-400) for FVD and KVD, from local weights.

Two weight files are accepted (docs/design.md §6); :func:`load_i3d` tells them apart:

* ``i3d_pretrained_400.pt`` (VideoGPT / TATS / MM-Diffusion): a state dict of the
  ``InceptionI3d`` class of the piergiaj/pytorch-i3d port, converted from the TF-Hub
  Kinetics-400 model. :class:`InceptionI3d` below is an independent implementation with the
  same parameter names (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_var``,
  ``logits.conv3d.bias``, ...), loaded strictly. As in those FVD implementations the clip's
  feature is the 400 pre-softmax logits averaged over the time steps the network leaves.
* ``i3d_torchscript.pt`` (StyleGAN-V, "perfectly reproduced" TF-Hub I3D): a TorchScript module,
  loaded with ``torch.jit.load`` and called as StyleGAN-V's users who preprocess themselves do:
  ``model(videos, rescale=False, resize=False, return_features=True)`` on our preprocessed
  ``[B, 3, T, 224, 224]`` clips in [-1, 1]; it returns the 400 pre-softmax logits.

TorchScript archives carry TorchScript code (their ``code/`` folder), which ``torch.jit.load``
compiles; a state-dict file is read with ``torch.load(weights_only=True)``, which never runs
pickled Python code.

Preprocessing (:class:`I3DFeatureExtractor`), following docs/design.md §6 and the
VideoGPT / MM-Diffusion code:

1. frames ``[B, T, 3, H, W]`` in [-1, 1] are first resized to ``resolution`` x ``resolution``
   (64 or 256: the paper's two evaluation sizes; bicubic with antialiasing, as MM-Diffusion's
   loader resizes its clips to 64^2 with bicubic interpolation) and rounded to 8-bit levels
   (the reference pipelines feed uint8 frames to the I3D preprocessing);
2. the shorter side is resized to 224 (bilinear, ``align_corners=False``, no antialiasing:
   ``F.interpolate`` as in VideoGPT's ``preprocess``) and the centre 224 x 224 is cropped;
3. values stay in [-1, 1] (VideoGPT's ``[-0.5, 0.5] * 2``);
4. clips shorter than 16 frames are extended by repeating their last frame, as
   MM-Diffusion's data loader does (the network needs at least 9 frames).
"""

from __future__ import annotations

import logging
import math
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.weights import CheckpointError, load_state_dict_file, load_weights

log = logging.getLogger(__name__)

NUM_CLASSES = 400
INPUT_SIZE = 224
MIN_FRAMES = 16  # clips are padded to at least this many frames (MM-Diffusion's clip length)
# VideoGPT / TATS / MM-Diffusion build their BatchNorm3d with eps=1e-5 (piergiaj's port and the
# TF original use 1e-3); 1e-5 keeps FVD comparable with the numbers those codes published.
BN_EPS = 1e-5


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding of one axis: (before, after), the extra pixel after."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``[B, C, T, H, W]`` so that a (kernel, stride) window gives ceil(size / stride)."""
    pads: list[int] = []
    for axis in (2, 1, 0):  # F.pad lists the last axis first: W, H, T
        pads += _same_padding(x.shape[2 + axis], kernel[axis], stride[axis])
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d + ReLU with TF 'SAME' padding; the logits unit has a bias
    and neither norm nor activation. Parameters: ``conv3d.*``, ``bn.*``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        *,
        norm: bool = True,
        activation: bool = True,
        bias: bool = False,
        bn_eps: float = BN_EPS,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=0.001) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TF 'SAME' padding (zeros: the inputs follow a ReLU, so >= 0)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 |
    3x3x3 max-pool -> 1x1. ``widths`` = (b0, b1a, b1b, b2a, b2b, b3b) output channels."""

    def __init__(self, in_channels: int, widths: Sequence[int], bn_eps: float = BN_EPS) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, w1a, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, w2a, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b, bn_eps=bn_eps)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))],
            dim=1,
        )


# (endpoint name, kind, arguments) in network order: Carreira & Zisserman 2017, fig. 3.
_LAYOUT: tuple[tuple[str, str, tuple], ...] = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """I3D Inception-v1 with the parameter names of piergiaj/pytorch-i3d's ``InceptionI3d``.

    Input ``[B, 3, T, 224, 224]`` RGB in [-1, 1]; output ``[B, num_classes]``: the pre-softmax
    logits of the Kinetics classes, averaged over the remaining time steps (after an
    average pool of 2 x 7 x 7 with stride 1; dropout is the identity at evaluation).
    """

    def __init__(
        self, num_classes: int = NUM_CLASSES, in_channels: int = 3, bn_eps: float = BN_EPS
    ) -> None:
        super().__init__()
        self.endpoints: list[str] = []
        channels = in_channels
        for name, kind, args in _LAYOUT:
            if kind == "conv":
                out, kernel, stride = args
                module: nn.Module = Unit3D(channels, out, kernel, stride, bn_eps=bn_eps)
                channels = out
            elif kind == "pool":
                module = MaxPool3dSame(*args)
            else:
                module = InceptionBlock(channels, args, bn_eps=bn_eps)
                channels = module.out_channels
            self.add_module(name, module)
            self.endpoints.append(name)
        self.logits = Unit3D(channels, num_classes, norm=False, activation=False, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c output ``[B, 1024, T', 7, 7]`` for 224 x 224 input."""
        for name in self.endpoints:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool3d(self.features(x), kernel_size=(2, 7, 7), stride=1)
        logits = self.logits(x)  # [B, classes, T'', 1, 1]
        return logits.flatten(2).mean(dim=2)


# --------------------------------------------------------------------------------------------
# Preprocessing and the extractor
# --------------------------------------------------------------------------------------------


def preprocess_videos(
    videos: torch.Tensor, resolution: int | None = None, min_frames: int = MIN_FRAMES
) -> torch.Tensor:
    """``[B, T, 3, H, W]`` in [-1, 1] -> I3D input ``[B, 3, max(T, min_frames), 224, 224]`` in
    [-1, 1] (steps 1-4 of the module docstring; ``resolution=None`` skips step 1)."""
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"videos must be [B, T, 3, H, W], got shape {tuple(videos.shape)}")
    b, t, _, h, w = videos.shape
    x = videos.reshape(b * t, 3, h, w).float()
    if resolution is not None and (h, w) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True)
        x = x.clamp(-1.0, 1.0)
    if resolution is not None:  # 8-bit levels, as the reference pipelines' uint8 frames
        x = torch.round((x + 1.0) * 127.5) / 127.5 - 1.0
    h, w = x.shape[-2:]
    scale = INPUT_SIZE / min(h, w)  # VideoGPT: the shorter side to 224, the other rounded up
    size = (INPUT_SIZE, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), INPUT_SIZE)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (x.shape[-2] - INPUT_SIZE) // 2, (x.shape[-1] - INPUT_SIZE) // 2
    x = x[..., top : top + INPUT_SIZE, left : left + INPUT_SIZE]
    x = x.reshape(b, t, 3, INPUT_SIZE, INPUT_SIZE)
    if t < min_frames:
        x = torch.cat([x, x[:, -1:].expand(b, min_frames - t, -1, -1, -1)], dim=1)
    return x.permute(0, 2, 1, 3, 4).contiguous()


class I3DFeatureExtractor:
    """Callable: videos ``[B, T, 3, H, W]`` in [-1, 1] -> float32 ``[B, 400]`` I3D logits.

    Attributes:
        model: the network (an :class:`InceptionI3d` or a TorchScript module), in eval mode.
        kind: "state_dict" or "torchscript".
        name: what produced the features, for reports.
        path: the weight file (None for an in-memory network).
    """

    def __init__(
        self,
        model: nn.Module | torch.jit.ScriptModule,
        *,
        kind: str = "state_dict",
        name: str | None = None,
        path: Path | None = None,
    ) -> None:
        if kind not in ("state_dict", "torchscript"):
            raise ValueError(f"kind must be 'state_dict' or 'torchscript', got {kind!r}")
        self.model = model.eval()
        self.kind = kind
        self.path = path
        self.name = name or (
            "I3D (Kinetics-400, VideoGPT/TATS port)"
            if kind == "state_dict"
            else "I3D (Kinetics-400, StyleGAN-V TorchScript)"
        )
        self.device = torch.device("cpu")
        self._warned_short = False

    def to(self, device: str | torch.device) -> I3DFeatureExtractor:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, resolution: int | None = 256) -> torch.Tensor:
        if videos.shape[1] < MIN_FRAMES and not self._warned_short:
            log.warning(
                "I3D: clips of %d frames are extended to %d by repeating their last frame",
                videos.shape[1],
                MIN_FRAMES,
            )
            self._warned_short = True
        x = preprocess_videos(videos.to(self.device), resolution)
        if self.kind == "torchscript":
            out = self.model(x, rescale=False, resize=False, return_features=True)
        else:
            out = self.model(x)
        if out.ndim == 1:  # some TorchScript exports squeeze a batch of one
            out = out[None]
        if out.shape != (x.shape[0], NUM_CLASSES):
            raise CheckpointError(
                f"I3D {self.path or ''}: returned features of shape {tuple(out.shape)}, "
                f"expected [{x.shape[0]}, {NUM_CLASSES}]"
            )
        return out.float()


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder and ``constants.pkl``;
    ``torch.save`` zip files have neither (their pickle is ``data.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def fill_num_batches_tracked(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict:
    """Add BatchNorm ``num_batches_tracked`` counters missing from a file (state dicts saved
    before PyTorch 0.4.1 lack them; they do not affect evaluation)."""
    out = dict(state_dict)
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    return out


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> I3DFeatureExtractor:
    """Load I3D from ``i3d_pretrained_400.pt`` (state dict) or ``i3d_torchscript.pt``.

    Raises:
        CheckpointError naming the file when it is missing, is neither format, holds pickled
        code, or its keys / shapes differ from :class:`InceptionI3d`'s.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"I3D weights not found: {path}")
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # recent torch deprecates TorchScript loudly
                warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise CheckpointError(
                f"{path}: looks like a TorchScript I3D but cannot be loaded ({err})"
            ) from None
        log.info("I3D: TorchScript module from %s", path)
        return I3DFeatureExtractor(model, kind="torchscript", path=path).to(device)
    try:
        state = load_state_dict_file(path)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err} -- expected i3d_pretrained_400.pt (a state dict of pytorch-i3d's "
            "InceptionI3d) or the TorchScript i3d_torchscript.pt"
        ) from None
    model = InceptionI3d()
    load_weights(model, fill_num_batches_tracked(model, state), strict=True, source=str(path))
    return I3DFeatureExtractor(model, kind="state_dict", path=path).to(device)
