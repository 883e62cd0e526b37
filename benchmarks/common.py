"""Helpers shared by the benchmark scripts: machine info, timing, FLOP counting, tables, JSON.

The scripts import this module as ``common``: run them from the repository root as
``.venv/bin/python benchmarks/<script>.py``, which puts ``benchmarks/`` first on ``sys.path``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
META = torch.device("meta")
CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Machine and run description
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (stored in every JSON report)."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor(),  # often empty on Linux: see cpu_model
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            cuda=torch.version.cuda,
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
        )
    return info


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.machine()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def command_line() -> str:
    """The command that produced a report, as a user would type it from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with the machine and the command line added; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(), "command": command_line(), **payload}
    path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------
# Parameters and FLOPs
# --------------------------------------------------------------------------------------------


def count_params(*modules: nn.Module | None) -> int:
    """Parameters of the given modules (shared parameters counted once; None is skipped)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


@dataclass
class FlopCount:
    """FLOPs of one call as ``torch.utils.flop_counter`` counts them.

    The counter reports FLOPs = 2 x multiply-adds for matmuls, convolutions and attention
    (SDPA), and counts nothing for element-wise ops, normalisations and softmax: the totals are
    the usual "model FLOPs" (a few % below what the hardware executes).
    """

    total: int
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    @property
    def gmacs(self) -> float:
        return self.total / 2e9


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """Count the FLOPs of ``fn()`` (any device, including meta tensors)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(int(counter.get_total_flops()), by_op)


def to_device(module: nn.Module, device: torch.device) -> nn.Module:
    """Move a module built under ``with torch.device(device)`` fully onto ``device``.

    Buffers made from NumPy (the DiT's sin-cos positions, ``torch.from_numpy``) ignore the
    device context and stay on the CPU; on meta they would then clash with meta activations.
    """
    return module.to(device)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs, after ``warmup`` runs that are not counted."""

    runs: list[float]
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "mean_s": self.mean,
            "repeats": len(self.runs),
            "warmup": self.warmup,
            "runs_s": self.runs,
        }


def time_cpu(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Median-able CPU timings of ``fn()`` with ``time.perf_counter``."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return Timing(runs, warmup)


def time_cuda(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """GPU timings of ``fn()`` between CUDA events, synchronising after every run (kernels are
    asynchronous: a host clock would measure the launch, not the work)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(max(1, repeats)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) / 1000.0)
    return Timing(runs, warmup)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A Markdown pipe table (readable in a terminal and pasteable into RESULTS.md).

    Cells are printed with ``str``; columns whose cells all look numeric are right-aligned.
    """
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def numeric(i: int) -> bool:
        col = [row[i] for row in cells if row[i] not in ("", "-")]
        return bool(col) and all(_looks_numeric(c) for c in col)

    right = [numeric(i) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True)
    )
    rule += "|"
    out = [line(list(headers)), rule, *(line(row) for row in cells)]
    if title:
        out.insert(0, f"\n{title}\n")
    return "\n".join(out)


def _looks_numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%x").lstrip("~"))
    except ValueError:
        return False
    return True


def fmt(value: float | None, digits: int = 1) -> str:
    """A number with thousands separators and ``digits`` decimals; None -> "-"."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_params(n: int) -> str:
    """Parameters in millions."""
    return f"{n / 1e6:,.1f}M"


def fmt_seconds(s: float | None) -> str:
    """Seconds with a unit that keeps 3 significant digits readable."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def random_pipeline(
    cfg: Any, vocoder: str = "hifigan", device: str | torch.device = "cpu"
) -> tuple[Any, str]:
    """An ``MMLDMPipeline`` of ``cfg``'s architecture from randomly initialised modules, built
    directly on ``device`` (initialising on a GPU is much faster than on the CPU), with
    identity latent statistics.

    ``vocoder``: "hifigan" (HiFi-GAN V1, random weights; its 80 mels and hop 256 must match the
    data's mel settings, only the rate label is taken from the data) or "griffin-lim".
    Returns (pipeline, a description of the vocoder).
    """
    import logging

    from mmldm.audio.hifigan import HiFiGANConfig, HiFiGANGenerator
    from mmldm.audio.vocoder import Vocoder, check_settings, load_vocoder
    from mmldm.codec import Codec, autoencoder_config, build_vae
    from mmldm.data.latents import LatentStats
    from mmldm.models.autoencoder import MultiModalAutoencoder
    from mmldm.models.dit import MultiModalDiT
    from mmldm.networks import dit_config
    from mmldm.pipeline import MMLDMPipeline

    device = torch.device(device)
    with torch.device(device):
        vae = build_vae(cfg.vae).to(device).eval().requires_grad_(False)
        model = (
            MultiModalAutoencoder(autoencoder_config(cfg)).to(device).eval().requires_grad_(False)
        )
        dit = MultiModalDiT(dit_config(cfg)).to(device).eval().requires_grad_(False)
    c_a, c_v = cfg.audio_latent_shape[0], cfg.video_latent_shape[0]
    stats = LatentStats(torch.zeros(c_a), torch.ones(c_a), torch.zeros(c_v), torch.ones(c_v))
    settings = cfg.data.mel
    if vocoder == "hifigan":
        hcfg = HiFiGANConfig.preset("V1")
        if hcfg.sampling_rate != settings.sample_rate:  # same network, other rate label
            hcfg = replace(hcfg, sampling_rate=settings.sample_rate)
        # raises ValueError when the mel settings (mels, n_fft, hop, ...) do not fit V1
        check_settings(hcfg, settings, f"HiFi-GAN V1 at {settings.sample_rate} Hz")
        voc = Vocoder(settings, generator=HiFiGANGenerator(hcfg)).to(device)
        note = "HiFi-GAN V1 (random weights)"
    elif vocoder == "griffin-lim":
        logging.getLogger("mmldm.audio.vocoder").setLevel(logging.ERROR)  # expected warning
        voc = load_vocoder(None, settings, cfg.vocoder.griffin_lim_iters).to(device)
        note = f"Griffin-Lim, {cfg.vocoder.griffin_lim_iters} iterations"
    else:
        raise ValueError(f"unknown vocoder {vocoder!r} (hifigan | griffin-lim)")
    return MMLDMPipeline(dit, stats, Codec(cfg, model, vae, vocoder=voc), cfg), note
