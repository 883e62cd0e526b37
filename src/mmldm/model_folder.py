"""A model folder: one trained MM-LDM in the layout of a diffusers pipeline folder, written by
``mmldm export`` (:mod:`mmldm.export`) and read by ``MMLDMPipeline.from_pretrained`` and every
command's ``--model``::

    MODEL/
        model_index.json          the pipeline class, mmldm version, one entry per component
        README.md                 the model card
        generator/                the DiT (EMA weights) and its latent statistics
            config.json           the resolved mmldm config (for reading; checked on load)
            model.safetensors     an mmldm inference checkpoint: the same config embedded
        autoencoder/              the multi-modal encoders, signal decoder, class head
            config.json, model.safetensors
        vae/                      the KL-VAE: a diffusers AutoencoderKL folder
            config.json, diffusion_pytorch_model.safetensors
        vocoder/                  HiFi-GAN (absent: Griffin-Lim)
            config.json, generator.safetensors
        decoder/, vae_decoder/    distilled decoders, when exported with them

An entry of ``[null, null]`` in ``model_index.json`` (diffusers' convention) is a component the
model does not have. A generator's checkpoint names the autoencoder it was trained on by content
(``mmldm.autoencoder_fingerprint``); the export stamps the fingerprint of the exported file, so
the folder's parts load together and with nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmldm.weights import CheckpointError, read_metadata

MODEL_INDEX = "model_index.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"  # an mmldm inference checkpoint (mmldm.checkpoint)
PIPELINE_CLASS = "MMLDMPipeline"
# component -> (library, class) as model_index.json names it
COMPONENTS = {
    "generator": ("mmldm", "MultiModalDiT"),
    "autoencoder": ("mmldm", "MultiModalAutoencoder"),
    "vae": ("diffusers", "AutoencoderKL"),
    "vocoder": ("mmldm", "HiFiGANGenerator"),
    "decoder": ("mmldm", "SignalDecoder"),
    "vae_decoder": ("mmldm", "TinyVAEDecoder"),
}
REQUIRED = ("generator", "autoencoder", "vae")
# components stored as mmldm checkpoints (config.json + model.safetensors with the config)
CHECKPOINTS = ("generator", "autoencoder", "decoder", "vae_decoder")


@dataclass
class ModelParts:
    """The components of a model folder (None: the model has none)."""

    root: Path
    generator: Path
    autoencoder: Path
    vae: Path
    vocoder: Path | None = None
    decoder: Path | None = None
    vae_decoder: Path | None = None


def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / MODEL_INDEX).is_file()


def read_model_folder(folder: str | Path) -> ModelParts:
    """Check a model folder and return the paths of its components.

    Raises:
        CheckpointError: naming the folder and what is wrong: no ``model_index.json``, another
            pipeline's index, a required component missing, a missing subfolder or file, or a
            ``config.json`` that differs from the config stored in its weights.
    """
    root = Path(folder)
    index_path = root / MODEL_INDEX
    if not index_path.is_file():
        what = "does not exist" if not root.exists() else f"has no {MODEL_INDEX}"
        raise CheckpointError(
            f"{root}: not an mmldm model folder ({what}); `mmldm export` writes one. Training "
            "runs load with --generator RUN --autoencoder RUN, or from_pretrained(generator_run, "
            "autoencoder=autoencoder_run)"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{index_path}: not valid JSON ({err})") from None
    if index.get("_class_name") != PIPELINE_CLASS:
        raise CheckpointError(
            f"{index_path}: a {index.get('_class_name')!r} folder, not an mmldm model "
            f"({PIPELINE_CLASS})"
        )
    parts: dict[str, Path | None] = {}
    for name in COMPONENTS:
        entry = index.get(name) or [None, None]
        parts[name] = None if entry[0] is None else _component(root, name)
        if parts[name] is None and name in REQUIRED:
            raise CheckpointError(f"{index_path}: the model has no {name} (required)")
    return ModelParts(root=root, **parts)  # type: ignore[arg-type]


def _component(root: Path, name: str) -> Path:
    """The path a loader takes for one component: the weights file of an mmldm checkpoint,
    the folder of the VAE and the vocoder."""
    folder = root / name
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(f"{root}: the {name} component is missing its {config.name}")
    if name not in CHECKPOINTS:
        return folder
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{root}: the {name} component is missing {WEIGHTS_FILE}")
    stored = json.loads(read_metadata(weights).get("mmldm.config", "null"))
    try:
        written = json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config}: not valid JSON ({err})") from None
    if written != stored:
        raise CheckpointError(
            f"{config}: differs from the config stored in {weights}, which is what loads; "
            "export the model again rather than editing config.json"
        )
    return weights


def containing_model(path: str | Path) -> ModelParts | None:
    """The model folder that ``path`` is, or whose component ``path`` is (its subfolder or
    weights file); None for anything else (a run, a checkpoint)."""
    path = Path(path).absolute()
    for root in (path, path.parent, path.parent.parent):
        inside = path.relative_to(root).parts
        if is_model_folder(root) and (not inside or inside[0] in COMPONENTS):
            return read_model_folder(root)
    return None
