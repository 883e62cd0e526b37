"""VGGish audio embeddings (Hershey et al. 2017) for FAD, from local weights.

Weights: the state dict of the common PyTorch port, harritaylor/torchvggish
(``vggish-10086976.pth``: keys ``features.{0,3,6,8,11,13}.{weight,bias}`` -- the VGG conv
stack -- and ``embeddings.{0,2,4}.{weight,bias}`` -- fc1_1, fc1_2, fc2). A state dict of
torchvggish's whole ``VGGish`` module (``pproc.pca_matrix``, ``pproc.pca_means`` beside them)
is accepted too. PCA parameters (``pca_eigen_vectors`` [128, 128], ``pca_means`` [128]) come
from a separate file (``vggish_pca_params-970ea276.pth``, or Google's original
``vggish_pca_params.npz``) or from the same state dict under those names.

Front end, re-implemented here from the reference ``mel_features.py`` / ``vggish_params.py``
of tensorflow/models (research/audioset/vggish), which differs from HiFi-GAN's Slaney mel in
:mod:`mmldm.audio.mel`:

* mono audio resampled to 16 kHz (:func:`resample`; the reference uses resampy),
* frames of 25 ms (400 samples) every 10 ms (160), no padding (incomplete frames dropped),
  a *periodic* Hann window ``0.5 - 0.5 cos(2 pi n / 400)``, |rfft| with 512 points,
* an HTK mel filterbank (``mel = 1127 ln(1 + f / 700)``): 64 triangular bands between
  125 and 7500 Hz, linear in mel, unnormalised, the DC bin always weighted 0,
* ``log(mel + 0.01)``,
* non-overlapping examples of 96 frames (0.96 s) x 64 bands; incomplete examples dropped.
  A clip shorter than one example (0.975 s) is zero-padded to one (with a warning) -- the
  reference would return no example at all.

Network: VGG conv stack (64, M, 128, M, 256, 256, M, 512, 512, M; 3x3 convs, ReLU, 2x2 max
pools) -> NHWC flatten (512 x 6 x 4 = 12288) -> 4096 -> 4096 -> 128.

Embedding options (:meth:`VGGish.embed`):

* ``final_relu`` (default False): torchvggish keeps the ReLU after the last layer (the first
  VGGish release); the current reference model and the FAD toolkits (google-research FAD,
  the ``frechet_audio_distance`` package) use the 128-d layer before it.
* ``postprocess`` (default False, needs the PCA parameters): the AudioSet release
  post-processing ``clip(P (e - mu), -2, 2)`` then 8-bit quantisation
  ``round((x + 2) * 255 / 4)`` (values 0..255, as float). FAD toolkits use the raw embeddings.
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmldm.weights import CheckpointError, load_state_dict_file, load_weights

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames
EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
PCA_KEYS = ("pca_eigen_vectors", "pca_means")
_PPROC_KEYS = ("pproc.pca_matrix", "pproc.pca_means")  # torchvggish's VGGish module

_ANSI = r"\x1b\[[0-9;]*m"  # terminal colour codes in torch's error messages

WINDOW_LENGTH = int(round(SAMPLE_RATE * WINDOW_SECONDS))  # 400
HOP_LENGTH = int(round(SAMPLE_RATE * HOP_SECONDS))  # 160
FFT_LENGTH = 2 ** int(math.ceil(math.log2(WINDOW_LENGTH)))  # 512
MIN_SAMPLES = WINDOW_LENGTH + (EXAMPLE_FRAMES - 1) * HOP_LENGTH  # 15600: one example
_warned_lengths: set[int] = set()  # clip lengths already reported as padded


# --------------------------------------------------------------------------------------------
# Resampling (shared with the AudioCLIP embedder)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _resample_kernel(
    orig: int, new: int, zeros: int, rolloff: float, beta: float
) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc filter bank ``[new, 1, K]`` and the padding ``width``.

    Output sample j = b * new + i (phase i) lies at input position ``s = b * orig + i * orig /
    new`` and is ``sum_k x[k] h(k - s)`` with ``h(d) = c sinc(c d) w(c d / zeros)``, where c is
    the cutoff relative to the input's Nyquist frequency (``rolloff * min(1, new / orig)``),
    sinc(x) = sin(pi x) / (pi x) and w a Kaiser window on [-1, 1] (``zeros`` zero crossings
    of the sinc on each side).
    """
    c = rolloff * min(1.0, new / orig)
    width = int(math.ceil(zeros / c))
    m = np.arange(-width, width + orig, dtype=np.float64)  # tap offsets of a block
    d = m[None, :] - (np.arange(new, dtype=np.float64) * orig / new)[:, None]
    u = np.clip(c * d / zeros, -1.0, 1.0)
    window = np.i0(beta * np.sqrt(1.0 - u * u)) / np.i0(beta)
    taps = c * np.sinc(c * d) * window * (np.abs(c * d) <= zeros)
    return torch.from_numpy(taps[:, None, :]), width


def resample(
    wave: torch.Tensor,
    orig_rate: int,
    new_rate: int,
    *,
    zeros: int = 16,
    rolloff: float = 0.945,
    beta: float = 8.6,
) -> torch.Tensor:
    """Band-limited resampling of ``[..., N]`` audio by a rational factor (windowed sinc).

    The ratio is reduced by the gcd (e.g. 16 kHz -> 44.1 kHz: 160 -> 441); a polyphase filter
    bank (see :func:`_resample_kernel`: 16 zero crossings, Kaiser window beta 8.6, i.e. about
    80 dB stop-band attenuation, pass band up to 94.5% of the lower Nyquist frequency) is
    applied as one strided ``conv1d``. Output length ``ceil(N * new / orig)``; the edges see
    zeros beyond the signal. Computed in float64, returned in the input's float dtype.
    """
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be > 0, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return wave
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    kernel, width = _resample_kernel(orig, new, zeros, rolloff, beta)
    shape, n = wave.shape[:-1], wave.shape[-1]
    x = wave.reshape(-1, 1, n).double()
    blocks = math.ceil(n / orig)
    x = F.pad(x, (width, width + blocks * orig - n + orig))
    y = F.conv1d(x, kernel.to(x.device), stride=orig)[..., :blocks]  # [B, new, blocks]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(n * new / orig)]
    dtype = wave.dtype if wave.is_floating_point() else torch.float32
    return y.to(dtype).reshape(*shape, -1)


# --------------------------------------------------------------------------------------------
# Log-mel examples
# --------------------------------------------------------------------------------------------


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=4)
def mel_matrix(
    num_bands: int = NUM_BANDS,
    num_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    fmin: float = MEL_MIN_HZ,
    fmax: float = MEL_MAX_HZ,
) -> torch.Tensor:
    """float64 ``[num_bins, num_bands]``: triangles linear in mel between num_bands + 2 edges
    spaced evenly in mel over [fmin, fmax]; bin k is at ``k * (sr / 2) / (num_bins - 1)`` Hz;
    row 0 (DC) is zero, as in HTK and the reference ``spectrogram_to_mel_matrix``."""
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))
    edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), num_bands + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return torch.from_numpy(weights)


def periodic_hann(length: int) -> torch.Tensor:
    """``0.5 - 0.5 cos(2 pi n / length)``, n = 0..length-1 (float64)."""
    n = torch.arange(length, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2.0 * math.pi * n / length)


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """16 kHz audio ``[B, N]`` (N >= 400) -> float64 ``[B, frames, 64]``,
    ``log(mel(|rfft_512(hann * frame)|) + 0.01)`` with frames = 1 + (N - 400) // 160."""
    x = wave.double()
    frames = x.unfold(-1, WINDOW_LENGTH, HOP_LENGTH) * periodic_hann(WINDOW_LENGTH).to(x.device)
    magnitude = torch.fft.rfft(frames, n=FFT_LENGTH).abs()
    return torch.log(magnitude @ mel_matrix().to(x.device) + LOG_OFFSET)


def waveform_to_examples(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Audio ``[B, N]`` in [-1, 1] at ``sample_rate`` -> float32 examples ``[B, W, 96, 64]``.

    W = (frames - 96) // 96 + 1 non-overlapping 0.96 s examples (W = 1 for a 1.6 s clip).
    """
    if wave.ndim != 2:
        raise ValueError(f"audio must be [B, N], got shape {tuple(wave.shape)}")
    x = resample(wave.double(), sample_rate, SAMPLE_RATE)
    if x.shape[-1] < MIN_SAMPLES:
        if x.shape[-1] not in _warned_lengths:
            _warned_lengths.add(x.shape[-1])
            log.warning(
                "VGGish: clips of %.3f s are zero-padded to one 0.975 s example",
                x.shape[-1] / SAMPLE_RATE,
            )
        x = F.pad(x, (0, MIN_SAMPLES - x.shape[-1]))
    mel = log_mel(x)  # [B, frames, 64]
    count = (mel.shape[1] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES + 1
    mel = mel[:, : count * EXAMPLE_FRAMES]
    return mel.reshape(mel.shape[0], count, EXAMPLE_FRAMES, NUM_BANDS).float()


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _vgg_stack() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for width in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(width), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(width)
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """The VGGish network with torchvggish's parameter names, plus optional PCA buffers.

    ``forward``: log-mel examples ``[M, 1, 96, 64]`` -> ``[M, 128]`` (fc2 output, before
    the final ReLU). PCA parameters live in the non-persistent buffers ``pca_matrix``
    ``[128, 128]`` and ``pca_means`` ``[128]`` (so the state dict stays torchvggish's).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg_stack()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, EMBEDDING_SIZE),
            nn.ReLU(),  # torchvggish's final ReLU; skipped unless final_relu=True
        )
        self.register_buffer("pca_matrix", torch.zeros(0), persistent=False)
        self.register_buffer("pca_means", torch.zeros(0), persistent=False)
        self.name = "VGGish"

    @property
    def has_pca(self) -> bool:
        return self.pca_matrix.numel() > 0

    def set_pca(self, eigen_vectors: torch.Tensor, means: torch.Tensor) -> None:
        """PCA parameters: eigen vectors ``[128, 128]`` (rows are components), means ``[128]``."""
        eigen_vectors = torch.as_tensor(eigen_vectors, dtype=torch.float32)
        means = torch.as_tensor(means, dtype=torch.float32).reshape(-1)
        if eigen_vectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.shape != (
            EMBEDDING_SIZE,
        ):
            raise ValueError(
                f"VGGish PCA: eigen vectors {tuple(eigen_vectors.shape)} and means "
                f"{tuple(means.shape)}, expected (128, 128) and (128,)"
            )
        device = self.embeddings[0].weight.device
        self.pca_matrix = eigen_vectors.to(device)
        self.pca_means = means.to(device)

    def forward(self, examples: torch.Tensor, final_relu: bool = False) -> torch.Tensor:
        x = self.features(examples)  # [M, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten, as TF's
        layers = self.embeddings if final_relu else self.embeddings[:-1]
        return layers(x)

    def postprocess(self, embeddings: torch.Tensor) -> torch.Tensor:
        """AudioSet release post-processing: PCA, clip to [-2, 2], quantise to 0..255."""
        if not self.has_pca:
            raise ValueError("VGGish post-processing needs the PCA parameters (--vggish-pca)")
        pca = (embeddings - self.pca_means) @ self.pca_matrix.T
        clipped = pca.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))

    @torch.no_grad()
    def embed(
        self,
        wave: torch.Tensor,
        sample_rate: int,
        *,
        postprocess: bool = False,
        final_relu: bool = False,
    ) -> torch.Tensor:
        """Audio ``[B, N]`` in [-1, 1] -> float32 ``[B, W, 128]`` (W 0.96 s windows per clip).

        See the module docstring for ``postprocess`` and ``final_relu``.
        """
        device = self.embeddings[0].weight.device
        examples = waveform_to_examples(wave.to(device), sample_rate)  # [B, W, 96, 64]
        b, w = examples.shape[:2]
        out = self(examples.reshape(b * w, 1, EXAMPLE_FRAMES, NUM_BANDS), final_relu=final_relu)
        if postprocess:
            out = self.postprocess(out)
        return out.reshape(b, w, EMBEDDING_SIZE).float()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list:
    """The numpy callables needed to unpickle plain numeric arrays (no code): torchvggish's PCA
    file stores numpy arrays, which ``torch.load(weights_only=True)`` refuses by default."""
    try:  # numpy 2; numpy 1.x has a bare numpy._core (torch imports it) without multiarray
        from numpy._core.multiarray import _reconstruct as reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct as reconstruct
    entries: list = [np.ndarray, np.dtype, reconstruct]
    for name in ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"):
        entries.append((reconstruct, name))
    dtype_classes = getattr(np, "dtypes", None)
    if dtype_classes is not None:
        entries += [getattr(dtype_classes, n) for n in dir(dtype_classes) if n.endswith("DType")]
    return entries


def load_tensor_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat dict of arrays from ``.pth/.pt`` (tensors, or numpy arrays of numbers), ``.npz``
    or ``.safetensors``, never executing pickled code; CheckpointError names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".npz" or (zipfile.is_zipfile(path) and _is_npz(path)):
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read the .npz file ({err})") from None
    try:
        return load_state_dict_file(path)
    except CheckpointError as first:
        if "refused to load" not in str(first) and "flat dict of tensors" not in str(first):
            raise
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors, "
            f"numeric numpy arrays and plain containers, and mmldm never executes pickled code "
            f"({re.sub(_ANSI, '', str(err).splitlines()[0])})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of arrays, found {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not an array"
            )
        out[str(key)] = value
    return out


def _is_npz(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return all(n.endswith(".npy") for n in archive.namelist())


def load_vggish(
    path: str | Path, pca_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> VGGish:
    """Load VGGish from a torchvggish state dict and, optionally, its PCA parameters.

    Raises:
        CheckpointError naming the file when a file is missing, holds pickled code, or its
        keys / shapes differ from torchvggish's.
    """
    path = Path(path)
    state = load_tensor_dict(path)
    pca: tuple[torch.Tensor, torch.Tensor] | None = None
    for names in (PCA_KEYS, _PPROC_KEYS):
        if all(k in state for k in names):
            pca = (state.pop(names[0]), state.pop(names[1]))
    model = VGGish()
    load_weights(model, state, strict=True, source=str(path))
    if pca_path is not None:
        params = load_tensor_dict(pca_path)
        missing = [k for k in PCA_KEYS if k not in params]
        if missing:
            raise CheckpointError(
                f"{pca_path}: not VGGish PCA parameters (missing {', '.join(missing)}; found "
                f"{', '.join(sorted(params)) or 'nothing'})"
            )
        pca = (params[PCA_KEYS[0]], params[PCA_KEYS[1]])
    if pca is not None:
        try:
            model.set_pca(*pca)
        except ValueError as err:
            raise CheckpointError(f"{pca_path or path}: {err}") from None
    model.name = "VGGish (torchvggish" + (", PCA available)" if model.has_pca else ")")
    return model.to(device).eval()
