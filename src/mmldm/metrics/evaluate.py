"""``mmldm evaluate``: FVD, KVD, FAD and the synthetic-benchmark scores of generated sounding
videos against real ones (protocol: docs/design.md §6).

Inputs:

* real: a data folder or manifest, read through :class:`SoundingVideoDataset` with the
  config's data settings (clips of ``data.num_frames`` frames at ``data.fps``, audio at
  ``data.sample_rate``, frames resized to ``data.resolution``);
* fake: every video file under a folder, each read as one clip of the same length from its
  start (longer files are cut; shorter ones are an error naming the file); frames of another
  size are resized to ``data.resolution`` like the real ones.

Up to ``num`` clips per side are drawn (seeded, without replacement) and streamed batch by
batch through the extractors whose weights are given; only their features are kept:

=====================  ==========================================  ====================
metric                 features                                    needs
=====================  ==========================================  ====================
FVD                    I3D logits (400-d), Frechet distance        ``--i3d``
KVD                    same features, unbiased polynomial MMD^2    ``--i3d``
FAD (VGGish)           VGGish 0.96 s window embeddings (128-d)     ``--vggish``
FAD (AudioCLIP x1e4)   AudioCLIP audio embeddings (1024-d) x 1e4   ``--audioclip``
=====================  ==========================================  ====================

VGGish embeddings are the raw 128-d layer, as the FAD toolkits use; with ``--vggish-pca`` they
are post-processed as in the AudioSet release (PCA, clip to [-2, 2], 8-bit levels), which the
report names. A metric whose weights are missing is listed with the option it needs.

When the data look like ``mmldm synth-data`` output (sidecars or class folders), the
synthetic-benchmark scores (:mod:`mmldm.synthetic.scores`) are computed too, for the
generated clips, the real ones (ceiling) and shuffled real pairs (chance). Generated clips
whose JSON record names the clip they were made from (a reconstruction's source, an a2v / v2a
condition: ``"condition"`` per sample, or the batch's ``{"audio" | "video", "start"}`` as
``mmldm sample`` writes) are also scored against it: object positions and each modality's
events kept, beside the same scores against other clips' sources (chance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmldm import __version__
from mmldm.config import Config, DataConfig, load_config
from mmldm.console import progress
from mmldm.data.clips import frames_to_tensor_layout, resize_frames
from mmldm.data.dataset import VIDEO_EXTENSIONS, DatasetError, SoundingVideoDataset, decode_span
from mmldm.data.media import MediaError, read_media, write_json
from mmldm.metrics.audioclip import FAD_SCALE, AudioCLIPEmbedder, load_audioclip
from mmldm.metrics.frechet import FeatureStats, kernel_distance
from mmldm.metrics.i3d import I3DFeatureExtractor, load_i3d
from mmldm.metrics.vggish import VGGish, load_vggish
from mmldm.synthetic.families import max_step
from mmldm.synthetic.scores import (
    RECONSTRUCTION_SCORES,
    SCORE_NAMES,
    Detections,
    detect_sample,
    label_from_path,
    reconstruction_scores,
    shuffled_pairing,
    synthetic_family,
    synthetic_scores,
)

log = logging.getLogger(__name__)

FVD, KVD = "FVD", "KVD"
FAD_VGGISH, FAD_AUDIOCLIP = "FAD (VGGish)", "FAD (AudioCLIP x1e4)"
METRICS = (FVD, KVD, FAD_VGGISH, FAD_AUDIOCLIP)
NEEDS = {
    FVD: "--i3d i3d_pretrained_400.pt (or i3d_torchscript.pt)",
    KVD: "--i3d i3d_pretrained_400.pt (or i3d_torchscript.pt)",
    FAD_VGGISH: "--vggish vggish-10086976.pth",
    FAD_AUDIOCLIP: "--audioclip AudioCLIP-Full-Training.pt",
}


# --------------------------------------------------------------------------------------------
# Reading clips
# --------------------------------------------------------------------------------------------


def list_fake_videos(folder: str | Path) -> list[Path]:
    """Every video file under ``folder`` (recursively, sorted)."""
    root = Path(folder)
    if not root.exists():
        raise DatasetError(f"{root}: folder of generated videos not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: --fake must be a folder of generated videos")
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
    )
    if not files:
        raise DatasetError(f"{root}: no video files (.mp4, ...) in this folder")
    return files


def sample_sources(fake_paths: list[Path]) -> dict[str, tuple[Path, float]]:
    """{generated file: (the clip it was made from, start in seconds)} from the JSON records
    beside the files (see the module docstring); files without one are left out."""
    sources: dict[str, tuple[Path, float]] = {}
    for folder in sorted({p.parent for p in fake_paths}):
        for record_file in sorted(folder.glob("*.json")):
            try:
                content = json.loads(record_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(content, dict) or not isinstance(content.get("samples"), list):
                continue
            batch = content.get("condition") if isinstance(content.get("condition"), dict) else {}
            for record in content["samples"]:
                if not isinstance(record, dict) or "file" not in record:
                    continue
                source = record.get("condition") or batch.get("video") or batch.get("audio")
                if source and Path(source).is_file():
                    start = float(record.get("start", batch.get("start") or 0.0))
                    sources[str(folder / record["file"])] = (Path(source), start)
    return sources


def read_fake_clip(path: Path, data: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One generated video as a clip: frames ``[F, 3, S, S]`` in [-1, 1] and audio ``[N]``.

    The first ``data.num_frames / data.fps`` seconds, frames on the ``data.fps`` grid (resized
    to ``data.resolution`` when of another size), audio at ``data.sample_rate``.
    Raises MediaError naming the file when it is shorter or unreadable.
    """
    media = read_media(
        path, sample_rate=data.sample_rate, duration=data.clip_seconds, grid_fps=data.fps
    )
    assert media.frames is not None and media.audio is not None
    frames, audio = media.frames, media.audio
    samples = data.clip_samples
    if len(frames) != data.num_frames or len(audio) < samples:
        raise MediaError(
            path,
            f"clip shorter than requested: {len(frames)} frames / {len(audio)} samples, "
            f"{data.num_frames} / {samples} needed",
        )
    if frames.shape[1:3] != (data.resolution, data.resolution):
        frames = resize_frames(frames, data.resolution, data.resize)
    return torch.from_numpy(frames_to_tensor_layout(frames)), torch.from_numpy(audio[:samples])


class _FakeClips(Dataset):
    """Generated videos as items like SoundingVideoDataset's; read errors are passed to the
    main process as {"error": message} (a MediaError does not survive DataLoader workers)."""

    def __init__(self, paths: list[Path], data: DataConfig) -> None:
        self.paths, self.data = paths, data

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            video, audio = read_fake_clip(path, self.data)
        except MediaError as err:
            return {"error": err.problem, "path": str(path)}
        return {"video": video, "audio": audio, "path": str(path), "start": 0.0}


def _draw(available: int, num: int, seed: int) -> list[int]:
    """Up to ``num`` of ``range(available)``, drawn without replacement (sorted)."""
    if available <= num:
        return list(range(available))
    return sorted(np.random.default_rng(seed).choice(available, num, replace=False).tolist())


def _batches(dataset: Dataset, indices: list[int], batch_size: int, workers: int):
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=list,
    )
    for items in loader:
        for item in items:
            if "error" in item:
                raise MediaError(item["path"], item["error"])
        yield items


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Feature accumulation
# --------------------------------------------------------------------------------------------


@dataclass
class _Extractors:
    i3d: I3DFeatureExtractor | None = None
    vggish: VGGish | None = None
    audioclip: AudioCLIPEmbedder | None = None
    resolution: int = 256
    vggish_postprocess: bool = False  # PCA + clip + 8-bit (when --vggish-pca is given)


@dataclass
class _Side:
    """Everything kept of one side: feature statistics and per-clip detections."""

    name: str
    clips: int = 0
    available: int = 0  # clips the side has, of which ``clips`` were drawn
    video: FeatureStats = field(default_factory=FeatureStats)
    vggish: FeatureStats = field(default_factory=FeatureStats)
    audioclip: FeatureStats = field(default_factory=FeatureStats)
    detections: list[Detections] = field(default_factory=list)


def _detect(
    frames, audio, path: str | Path, data: DataConfig, synthetic: tuple[str, int]
) -> Detections:
    """The synthetic benchmark's detections of one clip: ``frames`` ``[F, 3, S, S]`` float in
    [-1, 1] or ``[F, S, S, 3]`` uint8, ``audio`` float ``[N]`` at ``data.sample_rate``; its
    class (sidecar or class folder) is read from ``path``."""
    family, num_classes = synthetic
    return detect_sample(
        frames,
        audio,
        fps=data.fps,
        sample_rate=data.sample_rate,
        num_classes=num_classes,
        label=label_from_path(path, num_classes, family),
        path=str(path),
        family=family,
        max_step=max_step(data, family),
    )


def _accumulate(
    side: _Side,
    batches,
    total: int,
    ex: _Extractors,
    data: DataConfig,
    synthetic: tuple[str, int] | None,
    device: torch.device,
) -> None:
    bar = progress(total=total, desc=f"{side.name} clips", unit="clip")
    for items in batches:
        video = torch.stack([item["video"] for item in items])  # [B, F, 3, S, S] in [-1, 1]
        audio = torch.stack([item["audio"] for item in items])  # [B, N]
        if ex.i3d is not None:
            side.video.update(ex.i3d(video.to(device), ex.resolution))
        if ex.vggish is not None:
            windows = ex.vggish.embed(  # [B, W, 128]
                audio.to(device), data.sample_rate, postprocess=ex.vggish_postprocess
            )
            side.vggish.update(windows.reshape(-1, windows.shape[-1]))
        if ex.audioclip is not None:
            side.audioclip.update(ex.audioclip.embed(audio.to(device), data.sample_rate))
        if synthetic is not None:
            for item, clip_video, clip_audio in zip(items, video, audio, strict=True):
                side.detections.append(
                    _detect(clip_video, clip_audio, item["path"], data, synthetic)
                )
        side.clips += len(items)
        bar.update(len(items))
    bar.close()


def _frechet(real: FeatureStats, fake: FeatureStats, what: str) -> float:
    for name, stats in (("real", real), ("generated", fake)):
        if stats.count < 2:
            raise DatasetError(f"{what} needs at least 2 {name} samples, got {stats.count}")
    return real.frechet_distance(fake)


def _paired_scores(
    detections: list[Detections],
    fake_paths: list[Path],
    cfg: Config,
    synthetic: tuple[str, int],
    seed: int,
) -> dict[str, Any]:
    """Generated clips against the clips they were made from (when their records say which):
    ``{"paired": scores, "paired_chance": against other clips' sources, "paired_clips": n}``,
    or {} when no record names a source."""
    sources = sample_sources(fake_paths)
    pairs = [d for d in detections if d.path in sources]
    if not pairs:
        return {}
    data = cfg.data
    originals = []
    for d in pairs:
        path, start = sources[d.path]
        frames, audio = decode_span(path, data, start, data.clip_seconds)
        originals.append(_detect(frames, audio, path, data, synthetic))
    keys = cfg.autoencoder.key_frames
    chance = (
        reconstruction_scores(pairs, originals, keys, shuffled_pairing(len(pairs), seed))
        if len(pairs) >= 2
        else {}
    )
    return {
        "paired": reconstruction_scores(pairs, originals, keys),
        "paired_chance": chance,
        "paired_clips": len(pairs),
    }


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """The arguments of :func:`evaluate` that its steps share."""

    num: int  # clips drawn per side (>= 2)
    batch_size: int  # clips per extractor batch (>= 1)
    seed: int  # of the clip draws, the reservoir of KVD's samples and the shuffled pairs
    resolution: int | None  # square size frames are resized to before the I3D preprocessing
    device: torch.device


def _read_sets(
    real: str | Path, fake: str | Path, data: DataConfig, run: _Settings
) -> tuple[SoundingVideoDataset, _FakeClips, list[int], list[int]]:
    """(real clips, generated clips, drawn real indices, drawn generated indices): up to
    ``run.num`` indices per side, sorted, drawn with ``run.seed`` (real) and ``run.seed + 1``."""
    real_set = SoundingVideoDataset(real, data)
    fake_set = _FakeClips(list_fake_videos(fake), data)
    real_idx = _draw(len(real_set), run.num, run.seed)
    fake_idx = _draw(len(fake_set), run.num, run.seed + 1)
    log.info(
        "evaluating %d of %d real clips and %d of %d generated clips",
        len(real_idx), len(real_set), len(fake_idx), len(fake_set),
    )  # fmt: skip
    return real_set, fake_set, real_idx, fake_idx


def _load_extractors(
    i3d: str | Path | None,
    vggish: str | Path | None,
    vggish_pca: str | Path | None,
    audioclip: str | Path | None,
    run: _Settings,
) -> tuple[_Extractors, dict[str, dict[str, Any]]]:
    """The extractors whose weights are given, and for the report {extractor: {path, name,
    ..., sha256}} of each weight file read."""
    weights: dict[str, dict[str, Any]] = {}
    ex = _Extractors(resolution=run.resolution)
    if i3d is not None:
        ex.i3d = load_i3d(i3d, run.device)
        weights["i3d"] = {"path": str(i3d), "kind": ex.i3d.kind, "name": ex.i3d.name}
    if vggish is not None:
        ex.vggish = load_vggish(vggish, vggish_pca, run.device)
        ex.vggish_postprocess = vggish_pca is not None
        weights["vggish"] = {"path": str(vggish), "name": ex.vggish.name}
        if vggish_pca is not None:
            weights["vggish_pca"] = {"path": str(vggish_pca), "name": "VGGish PCA parameters"}
    elif vggish_pca is not None:
        log.warning("--vggish-pca %s is ignored without --vggish", vggish_pca)
    if audioclip is not None:
        ex.audioclip = load_audioclip(audioclip, run.device)
        weights["audioclip"] = {
            "path": str(audioclip),
            "name": ex.audioclip.name,
            "input_scale": ex.audioclip.input_scale,
        }
    for entry in weights.values():
        entry["sha256"] = sha256_of(entry["path"])
    return ex, weights


def _synthetic_data(
    real_set: SoundingVideoDataset, fake_set: _FakeClips, data: DataConfig
) -> tuple[str, int] | None:
    """(family, K) when the real videos (else the generated ones) look like ``mmldm
    synth-data`` output, else None."""
    real_paths = [str(v.path) for v in real_set.videos]
    return synthetic_family(real_paths, data.num_classes) or synthetic_family(
        [str(p) for p in fake_set.paths], data.num_classes
    )


def _embed(
    name: str,
    dataset: Dataset,
    drawn: list[int],
    ex: _Extractors,
    data: DataConfig,
    synthetic: tuple[str, int] | None,
    run: _Settings,
) -> _Side:
    """The drawn clips of one side streamed through the extractors: its feature statistics
    (I3D logits ``[n, 400]``, ``run.num`` of them kept for KVD; VGGish windows ``[n * W, 128]``;
    AudioCLIP ``[n, 1024]``) and, for synthetic data, each clip's detections."""
    side = _Side(name, available=len(dataset), video=FeatureStats(keep=run.num, seed=run.seed))
    with torch.no_grad():
        _accumulate(
            side,
            _batches(dataset, drawn, run.batch_size, data.num_workers),
            len(drawn), ex, data, synthetic, run.device,
        )  # fmt: skip
    return side


def _distances(real_side: _Side, fake_side: _Side, ex: _Extractors) -> dict[str, dict[str, Any]]:
    """{metric: {value, extractor, real_clips, fake_clips, ...}} of each extractor loaded:
    FVD and FAD are Frechet distances (>= 0; 0: the same Gaussian statistics), FAD (AudioCLIP)
    scaled by 1e4; KVD is unbiased, so it can fall slightly below 0 when the sides match."""
    metrics: dict[str, dict[str, Any]] = {}
    counts = {"real_clips": real_side.clips, "fake_clips": fake_side.clips}
    if ex.i3d is not None:
        metrics[FVD] = {
            "value": _frechet(real_side.video, fake_side.video, FVD),
            "extractor": ex.i3d.name,
            **counts,
        }
        metrics[KVD] = {
            "value": kernel_distance(real_side.video.samples, fake_side.video.samples),
            "extractor": ex.i3d.name,
            **counts,
        }
    if ex.vggish is not None:
        metrics[FAD_VGGISH] = {
            "value": _frechet(real_side.vggish, fake_side.vggish, FAD_VGGISH),
            "extractor": (
                "VGGish (PCA + 8-bit embeddings of 0.96 s windows, AudioSet release format)"
                if ex.vggish_postprocess
                else "VGGish (raw 128-d embeddings of 0.96 s windows)"
            ),
            "real_windows": real_side.vggish.count,
            "fake_windows": fake_side.vggish.count,
            **counts,
        }
    if ex.audioclip is not None:
        metrics[FAD_AUDIOCLIP] = {
            "value": FAD_SCALE * _frechet(real_side.audioclip, fake_side.audioclip, FAD_AUDIOCLIP),
            "extractor": f"{ex.audioclip.name}, 44.1 kHz, x1e4 as MM-Diffusion",
            **counts,
        }
    return metrics


def _synthetic_report(
    real_side: _Side,
    fake_side: _Side,
    fake_paths: list[Path],
    cfg: Config,
    found: tuple[str, int],
    seed: int,
) -> dict[str, Any]:
    """The synthetic-benchmark scores ({score: value}, fractions in [0, 1] but the position
    errors in px) of the generated clips, the real ones (ceiling), shuffled real pairs (chance)
    and, where records name them, the generated clips against their sources."""
    paired = _paired_scores(fake_side.detections, fake_paths, cfg, found, seed)
    fake_scores = synthetic_scores(fake_side.detections, seed)
    real_scores = synthetic_scores(real_side.detections, seed)
    labelled = sum(d.label is not None for d in fake_side.detections)
    return {
        "family": found[0],
        "num_classes": found[1],
        "generated": fake_scores["value"],
        "generated_shuffled": fake_scores["shuffled"],
        "real": real_scores["value"],  # ceiling
        "chance": real_scores["shuffled"],  # shuffled real pairs
        "generated_labelled_clips": labelled,
        **paired,
        "note": (
            "class accuracies against the conditioned class (sidecar or class folder)"
            if labelled
            else "generated clips carry no class: audio-video agreement and sync only"
        ),
    }


def _report_settings(
    real: str | Path,
    fake: str | Path,
    cfg: Config,
    run: _Settings,
    real_side: _Side,
    fake_side: _Side,
    weights: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The report's ``settings``: inputs, clips drawn of those available, the clip format, the
    extractors' weight files and the mmldm version, to tell which results compare."""
    data = cfg.data
    return {
        "real": str(real),
        "fake": str(fake),
        "real_clips": real_side.clips,
        "fake_clips": fake_side.clips,
        "real_clips_available": real_side.available,
        "fake_clips_available": fake_side.available,
        "num": run.num,
        "seed": run.seed,
        "resolution": run.resolution,
        "batch_size": run.batch_size,
        "device": str(run.device),
        "config": cfg.name,
        "data": {
            "num_frames": data.num_frames,
            "fps": data.fps,
            "resolution": data.resolution,
            "sample_rate": data.sample_rate,
            "clip_seconds": data.clip_seconds,
        },
        "extractors": weights,
        "mmldm_version": __version__,
    }


def evaluate(
    real: str | Path,
    fake: str | Path,
    *,
    cfg: Config,
    i3d: str | Path | None = None,
    vggish: str | Path | None = None,
    vggish_pca: str | Path | None = None,
    audioclip: str | Path | None = None,
    resolution: int | None = 256,
    num: int = 2048,
    batch_size: int = 16,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Compute every metric the given weights allow (see the module docstring).

    Args:
        real: data folder or manifest; fake: folder of generated videos.
        cfg: the config whose ``data`` settings define a clip.
        i3d, vggish, vggish_pca, audioclip: local weight files (None: metric not computed).
        resolution: frames are resized to this square size before the I3D preprocessing
            (the paper reports 64 and 256).
        num: clips drawn per side; batch_size: clips per extractor batch.

    Returns:
        A JSON-ready dict: ``metrics`` {name: {value, extractor, real_clips, fake_clips}},
        ``missing`` [{metric, needs}], ``synthetic`` (or None) and ``settings``.
    """
    if num < 2:
        raise ValueError(f"num must be >= 2 clips per side, got {num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    run = _Settings(num, batch_size, seed, resolution, torch.device(device))
    real_set, fake_set, real_idx, fake_idx = _read_sets(real, fake, cfg.data, run)
    ex, weights = _load_extractors(i3d, vggish, vggish_pca, audioclip, run)
    found = _synthetic_data(real_set, fake_set, cfg.data)
    real_side = _embed("real", real_set, real_idx, ex, cfg.data, found, run)
    fake_side = _embed("generated", fake_set, fake_idx, ex, cfg.data, found, run)
    metrics = _distances(real_side, fake_side, ex)
    synthetic = None
    if found is not None:
        synthetic = _synthetic_report(real_side, fake_side, fake_set.paths, cfg, found, seed)
    return {
        "metrics": metrics,
        "missing": [{"metric": m, "needs": NEEDS[m]} for m in METRICS if m not in metrics],
        "synthetic": synthetic,
        "settings": _report_settings(real, fake, cfg, run, real_side, fake_side, weights),
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-" if value is None else str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def _fmt_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_report(result: dict[str, Any]) -> str:
    """The printed tables: metrics (value, extractor, clips) and the synthetic scores."""
    rows = [("metric", "value", "extractor", "clips (real / generated)")]
    for name in METRICS:
        entry = result["metrics"].get(name)
        if entry is not None:
            clips = f"{entry['real_clips']} / {entry['fake_clips']}"
            rows.append((name, _fmt(entry["value"]), entry["extractor"], clips))
    for entry in result["missing"]:
        rows.append((entry["metric"], "missing", f"needs {entry['needs']}", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    synthetic = result.get("synthetic")
    if synthetic:
        lines += [
            "",
            f"synthetic benchmark ({synthetic.get('family', 'ball')} family, "
            f"{synthetic['num_classes']} classes; {synthetic['note']})",
        ]
        table = [("score", "generated", "real (ceiling)", "shuffled real (chance)")]
        for name in SCORE_NAMES:
            if name in synthetic["generated"] or name in synthetic["real"]:
                table.append(
                    (
                        name.replace("_", " "),
                        _fmt_score(synthetic["generated"].get(name)),
                        _fmt_score(synthetic["real"].get(name)),
                        _fmt_score(synthetic["chance"].get(name)),
                    )
                )
        if synthetic.get("paired"):
            table.append(("against each clip's source", "", "", "other clips' (chance)"))
            for name in RECONSTRUCTION_SCORES:
                if name in synthetic["paired"]:
                    table.append(
                        (
                            f"  {name.replace('_', ' ')}",
                            _fmt_score(synthetic["paired"][name]),
                            "",
                            _fmt_score(synthetic["paired_chance"].get(name)),
                        )
                    )
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        lines += ["  ".join(r[i].ljust(widths[i]) for i in range(4)).rstrip() for r in table]
    settings = result["settings"]
    lines += [
        "",
        f"clips: {settings['real_clips']} real (of {settings['real_clips_available']}), "
        f"{settings['fake_clips']} generated (of {settings['fake_clips_available']}); "
        f"I3D input resized to {settings['resolution']}^2 first; config {settings['config']}",
    ]
    return "\n".join(lines)


def evaluate_command(args: argparse.Namespace) -> int:
    """``mmldm evaluate`` (options: see ``mmldm evaluate --help``); returns the exit code."""
    cfg = load_config(args.config, args.overrides)
    log.info("config %s: clips of %d frames at %g fps, audio at %d Hz", cfg.name,
             cfg.data.num_frames, cfg.data.fps, cfg.data.sample_rate)  # fmt: skip
    for option, value, least in (("--num", args.num, 2), ("--batch-size", args.batch_size, 1)):
        if value < least:
            print(f"mmldm evaluate: error: {option} must be >= {least}, got {value}")
            return 2
    result = evaluate(
        args.real,
        args.fake,
        cfg=cfg,
        i3d=args.i3d,
        vggish=args.vggish,
        vggish_pca=args.vggish_pca,
        audioclip=args.audioclip,
        resolution=args.resolution,
        num=args.num,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    print(format_report(result))
    if args.out:
        print(f"\nwrote {write_json(args.out, result)}")
    return 0
