"""``mmldm export``: a generator run and its autoencoder run -> one self-contained model folder
(layout: :mod:`mmldm.model_folder`), with a model card.

Only inference weights travel: the generator's EMA weights (unless ``use_ema=False``) and its
latent statistics, the autoencoder without its discriminator, the VAE as a diffusers folder, the
HiFi-GAN generator as safetensors. The folder is written beside its destination and renamed
into place, as checkpoints are.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from mmldm import __version__
from mmldm.audio.hifigan import resolve_hifigan_files
from mmldm.audio.vocoder import load_vocoder_from_config
from mmldm.checkpoint import (
    Checkpoint,
    check_made_from,
    checkpoint_fingerprint,
    load_checkpoint,
    write_weights,
)
from mmldm.codec import build_vae, distilled_checkpoint
from mmldm.config import config_to_dict
from mmldm.model_folder import (
    COMPONENTS,
    CONFIG_FILE,
    MODEL_INDEX,
    PIPELINE_CLASS,
    WEIGHTS_FILE,
)
from mmldm.networks import dit_config
from mmldm.tasks import TASKS
from mmldm.weights import CheckpointError, load_weights

log = logging.getLogger(__name__)


def export_model(
    generator: str | Path,
    autoencoder: str | Path,
    out: str | Path,
    *,
    vocoder: str | Path | None = None,
    decoder: str | Path | None = None,
    vae_decoder: str | Path | None = None,
    scores: str | Path | None = None,
    use_ema: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the model folder ``out``.

    Args:
        generator, autoencoder: runs, checkpoint folders or weights files; the generator must
            have been trained on this autoencoder's latents.
        vocoder: a HiFi-GAN folder (default: the autoencoder's ``vocoder.path`` if set; none:
            the model decodes audio with Griffin-Lim).
        decoder, vae_decoder: distilled decoders of this autoencoder to ship (and load by
            default) with it.
        scores: an ``mmldm evaluate --out`` JSON report of this model, for the model card.
        overwrite: replace an existing ``out``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; --overwrite replaces it")
    report = _read_scores(scores)
    gen = load_checkpoint(generator, kind="generator")
    found = check_made_from(gen, autoencoder)
    ae = load_checkpoint(autoencoder, kind="autoencoder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        parts = _write_parts(tmp, gen, ae, found, vocoder, decoder, vae_decoder, use_ema)
        index = {"_class_name": PIPELINE_CLASS, "_mmldm_version": __version__}
        index.update(
            {
                name: list(COMPONENTS[name]) if parts.get(name) else [None, None]
                for name in COMPONENTS
            }
        )
        (tmp / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(out.name, gen, ae, parts, report))
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s)", out, ", ".join(name for name in COMPONENTS if parts.get(name)))
    return out


def _read_scores(path: str | Path | None) -> dict | None:
    if path is None:
        return None
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON report ({err})") from None
    if "metrics" not in report:
        raise ValueError(f"{path}: not an `mmldm evaluate --out` report (no 'metrics')")
    return report


def _write_parts(
    root: Path,
    gen: Checkpoint,
    ae: Checkpoint,
    found: str,
    vocoder: str | Path | None,
    decoder: str | Path | None,
    vae_decoder: str | Path | None,
    use_ema: bool,
) -> dict[str, Any]:
    """Every component's subfolder; returns what the model card reports of each."""
    if "vae" not in ae.modules:
        raise CheckpointError(
            f"{ae.path}: holds no VAE; export takes the autoencoder's training run (a model "
            "folder is already exported: copy it)"
        )
    modules = {"autoencoder": ae.state_dict("autoencoder")}
    ae_file = _write_checkpoint(root, "autoencoder", ae, modules, _provenance(ae))
    vae = build_vae(ae.config.vae)
    load_weights(vae, ae.state_dict("vae"), source=str(ae.path))
    vae.save_pretrained(root / "vae", safe_serialization=True)
    # the exported parts name the exported autoencoder by its fingerprint
    link = {
        "mmldm.autoencoder": "the autoencoder/ of its model folder",
        "mmldm.autoencoder_fingerprint": checkpoint_fingerprint(ae_file),
    }
    weights = "ema" if use_ema and "ema" in gen.modules else "dit"
    modules = {"dit": gen.state_dict(weights), "latent_stats": gen.state_dict("latent_stats")}
    meta = {**_provenance(gen), **link, "mmldm.weights": weights}
    _write_checkpoint(root, "generator", gen, modules, meta)
    parts: dict[str, Any] = {"generator": weights, "autoencoder": True, "vae": True}
    for name, path in (("decoder", decoder), ("vae_decoder", vae_decoder)):
        if path is not None:
            dist = distilled_checkpoint(path, ae.path, found)
            modules = {name: dist.state_dict(name)}
            _write_checkpoint(root, name, dist, modules, {**_provenance(dist), **link})
            parts[name] = dist.config.sample
    parts["vocoder"] = _write_vocoder(root / "vocoder", ae, vocoder)
    return parts


def _provenance(ckpt: Checkpoint) -> dict[str, str]:
    """The metadata a checkpoint keeps when exported: where it came from and its training
    data; its old autoencoder link is replaced."""
    keep = {k: v for k, v in ckpt.metadata.items() if k.startswith("mmldm.data")}
    return {**keep, "mmldm.source": str(ckpt.path)}


def _write_checkpoint(
    root: Path, name: str, ckpt: Checkpoint, modules: dict, metadata: dict[str, str]
) -> Path:
    """``root/name/model.safetensors`` (an mmldm inference checkpoint) and its config.json."""
    folder = root / name
    folder.mkdir(parents=True)
    path = folder / WEIGHTS_FILE
    counts = json.loads(ckpt.metadata.get("mmldm.parameters", "{}"))  # for `mmldm info`
    counts = {module: counts[module] for module in modules if module in counts}
    metadata = {**metadata, "mmldm.parameters": json.dumps(counts)}
    write_weights(
        path, modules, ckpt.config, kind=ckpt.kind, step=ckpt.step, extra_metadata=metadata
    )
    (folder / CONFIG_FILE).write_text(json.dumps(config_to_dict(ckpt.config), indent=2) + "\n")
    return path


def _write_vocoder(folder: Path, ae: Checkpoint, path: str | Path | None) -> str | None:
    """HiFi-GAN as ``config.json`` + ``generator.safetensors`` (weight norm folded), checked
    against the autoencoder's mel settings; None (Griffin-Lim) without one."""
    path = path or ae.config.vocoder.path
    if not path:
        return None
    voc = load_vocoder_from_config(ae.config, path)  # refuses mel settings that differ
    assert voc.generator is not None
    folder.mkdir(parents=True)
    shutil.copyfile(resolve_hifigan_files(path)[0], folder / CONFIG_FILE)
    save_file(
        {k: v.contiguous() for k, v in voc.generator.state_dict().items()},
        str(folder / "generator.safetensors"),
    )
    return str(path)


def _replace(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``, moving an existing ``out`` away first (and back, should the
    rename fail)."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".old-{out.name}-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The model card (README.md of the folder, with the Hub's YAML header)
# --------------------------------------------------------------------------------------------


_CARD = """\
---
library_name: mmldm
tags: [mmldm, sounding-video-generation, audio-to-video, video-to-audio, latent-diffusion]
---

# {name}

An MM-LDM sounding video generator (Sun et al., *MM-LDM: Multi-Modal Latent Diffusion Model for
Sounding Video Generation*, ACM MM 2024): it generates short videos together with their sound,
and video from audio, audio from video, long videos and continuations. Exported by mmldm
{version} on {date}.

## Model

| component | what | training steps |
| --- | --- | --- |
{components}

{clips}

## Training data

{data}

## Evaluation

{scores}

## Intended use and limitations

For research on joint audio-video generation. The model makes clips like its training data
only (its domain, classes, clip length and resolution); it has not been evaluated for anything
else. Do not use it to deceive or to impersonate people; label what it generates as generated.

## How to use

```python
import torch
from mmldm.pipeline import MMLDMPipeline

pipe = MMLDMPipeline.from_pretrained("{name}")
out = pipe("svg", num_samples=2, generator=torch.Generator().manual_seed(0))
pipe.save(out, "samples/")  # mp4 files with sound
```

```
mmldm sample --model {name} --task svg --num 4 --out samples/
mmldm sample --model {name} --task a2v --audio clips/ --out a2v/
mmldm app --model {name}
```
"""


def model_card(
    name: str, gen: Checkpoint, ae: Checkpoint, parts: dict[str, Any], scores: dict | None
) -> str:
    """The model card: what the model is, its training data and steps, its scores, its
    intended use and how to load it."""
    data, sample = gen.config.data, gen.config.sample
    clips = (
        f"Clips: {data.num_frames} frames at {data.fps:g} fps ({data.clip_seconds:g} s), "
        f"{data.resolution}x{data.resolution} pixels, mono audio at {data.sample_rate} Hz. "
        f"Sampling defaults: {sample.steps} {sample.sampler} steps, guidance "
        f"{sample.guidance_audio:g} (audio) / {sample.guidance_video:g} (video). "
        f"Tasks: {', '.join(TASKS)}."
    )
    return _CARD.format(
        name=name,
        version=__version__,
        date=datetime.date.today(),
        components="\n".join(_component_rows(gen, ae, parts)),
        clips=clips,
        data="\n".join(_data_lines(gen, ae)),
        scores="\n".join(_scores_section(scores, name)),
    )


def _component_rows(gen: Checkpoint, ae: Checkpoint, parts: dict[str, Any]) -> list[str]:
    dit, vae = dit_config(gen.config), gen.config.vae
    weights = "EMA" if parts["generator"] == "ema" else "raw, no EMA"
    vocoder = f"HiFi-GAN (from {parts['vocoder']})" if parts.get("vocoder") else (
        "none: Griffin-Lim from the mel spectrogram (ship a HiFi-GAN for better audio)"
    )  # fmt: skip
    rows = [
        f"| generator | DiT, {dit.depth} blocks of width {dit.hidden_size}, {dit.num_heads} "
        f"heads ({weights} weights) | {gen.step} |",
        f"| autoencoder | multi-modal encoders, signal decoder, class head | {ae.step} |",
        f"| vae | KL-VAE, {vae.latent_channels} latent channels, 1/{vae.downsample} resolution "
        "(diffusers AutoencoderKL) | |",
        f"| vocoder | {vocoder} | |",
    ]
    if parts.get("decoder"):
        own = parts["decoder"]
        what = f"distilled signal decoder, {own.decoder_steps} {own.decoder_sampler} steps"
        rows.append(f"| decoder | {what}, no guidance (decodes by default) | |")
    if parts.get("vae_decoder"):
        what = "distilled tiny VAE decoder, one pass, in place of the KL-VAE's decoder"
        rows.append(f"| vae_decoder | {what} (decodes by default) | |")
    return rows


def _data_lines(gen: Checkpoint, ae: Checkpoint) -> list[str]:
    """Where the training clips came from, as the checkpoints recorded it."""
    cfg = gen.config
    classes = json.loads(gen.metadata.get("mmldm.data_classes", "[]"))
    names = ", ".join(classes) or (
        f"{cfg.data.num_classes} (names not recorded)" if cfg.data.num_classes else "none"
    )
    return [
        f"- Generator: the latent cache of `{gen.metadata.get('mmldm.data', 'not recorded')}` "
        f"({gen.metadata.get('mmldm.data_clips', '?')} clips), config `{cfg.name}`.",
        f"- Autoencoder: `{ae.metadata.get('mmldm.data', 'not recorded')}`, config "
        f"`{ae.config.name}`.",
        f"- Classes: {names}" + (" (class-conditional)" if cfg.dit.class_conditional else ""),
    ]


def _scores_section(report: dict | None, name: str) -> list[str]:
    """The evaluate report's metrics (and synthetic-benchmark scores) as Markdown tables."""
    if report is None:
        return [
            "Not evaluated at export. Score it with `mmldm sample --model "
            f"{name} ...` and `mmldm evaluate --real DATA --fake SAMPLES --out report.json`, "
            "then export again with `--scores report.json`."
        ]
    settings = report.get("settings", {})
    lines = [
        f"`mmldm evaluate` on {settings.get('fake_clips', '?')} generated and "
        f"{settings.get('real_clips', '?')} real clips:",
        "",
        "| metric | value | extractor |",
        "| --- | --- | --- |",
    ]
    for metric, entry in report["metrics"].items():
        lines.append(f"| {metric} | {entry['value']:.4g} | {entry['extractor']} |")
    for entry in report.get("missing", []):
        lines.append(f"| {entry['metric']} | not computed | needs {entry['needs']} |")
    synthetic = report.get("synthetic")
    if synthetic:
        lines += [
            "",
            "| score | generated | real (ceiling) | shuffled real (chance) |",
            "| --- | --- | --- | --- |",
        ]
        for score, value in synthetic["generated"].items():
            real, chance = synthetic["real"].get(score), synthetic["chance"].get(score)
            lines.append(f"| {score} | {_fmt(value)} | {_fmt(real)} | {_fmt(chance)} |")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
