"""Training memory per GPU for a config's two large stages (the DiT; the multi-modal autoencoder
with its decoder UNet): DDP vs FSDP, batch 1..8, with and without gradient checkpointing, and
the largest batch that fits an 80 GB and a 141 GB GPU.

What is measured and what is computed (the tables say which):

- parameters: counted on the models (exact).
- activations ("measured"): one training forward runs on the CPU, at batch 1 and 2, under
  ``torch.autograd.graph.saved_tensors_hooks``; the bytes of every distinct storage the graph
  keeps for the backward are summed (the parameters themselves excluded; autocast's bf16 copies
  of the weights included). In fp32 and under bf16 autocast (what training on a GPU runs);
  linear in the batch (the difference of batch 2 and 1 per clip) beyond.
- model states ("formula"): AdamW on fp32 weights: per trainable parameter 4 B weight + 4 B
  gradient + 8 B Adam moments, 4 B more for the generator's EMA, 4 B per frozen parameter (the
  VAE). DDP holds all of it on every GPU, plus its gradient buckets (4 B per trainable
  parameter). FSDP (full shard over N GPUs, the repository's accelerate configs) divides the
  trainable weights, gradients and moments by N, keeps the EMA whole (as training does), and
  adds the largest shard unit gathered whole (weights + gradients): a DiTBlock for the DiT, the
  whole model for the autoencoder (``accelerate/fsdp_autoencoder.yaml`` wraps no blocks).
- not counted: the CUDA context and allocator fragmentation (1-3 GB), the data loader, the
  discriminator's adversarial term (the autoencoder row is eq. 3 without it). "Fits" leaves
  10% of the GPU for them.

The autoencoder's forward here is eq. 3 on random VAE latents (the frozen VAE encodes under
no_grad, so it adds no activations); the DiT's is eq. 8 on random latents.

    .venv/bin/python benchmarks/memory.py [--config paper_landscape] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from common import RESULTS_DIR, format_table, machine_info, write_json
from torch import nn

from mmldm.codec import VAEInputs, autoencoder_config, build_vae
from mmldm.config import Config, load_config
from mmldm.diffusion.schedule import alphas_cumprod
from mmldm.models.autoencoder import MultiModalAutoencoder
from mmldm.models.dit import DiTBlock, MultiModalDiT
from mmldm.networks import dit_config
from mmldm.train.autoencoder import autoencoder_loss
from mmldm.train.common import BatchRandom
from mmldm.train.generator import generator_loss

log = logging.getLogger("memory")
GB = 1e9
GPUS = {"80 GB (A100 / H100)": 80e9, "141 GB (H200)": 141e9}
BATCHES = range(1, 9)
USABLE = 0.9  # of a GPU's memory, for what is not counted
FSDP_GPUS = 8


@dataclass
class Stage:
    """One stage's sizes: parameters (trainable, frozen, EMA copies), the largest wrapped block
    and the measured activation bytes per clip (slope) and per step (intercept)."""

    name: str
    trainable: int
    frozen: int
    ema: int
    largest_block: int
    activations: dict[str, tuple[float, float]]  # precision / checkpointing -> (a, b): a + b*B


def saved_bytes(fn: Callable[[], torch.Tensor], params: set[int]) -> int:
    """Bytes of the distinct storages that autograd saves for backward while the training
    forward ``fn`` runs, parameters left out (the backward frees them; checkpointed blocks
    save only their inputs and recompute the rest in the backward)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()  # the forward records what it saves; no backward is needed to count it
    return sum(seen.values())


def measure(model: nn.Module, forward: Callable[[int], torch.Tensor]) -> dict[str, tuple]:
    """Activation bytes ``a + b * batch`` for fp32 / bf16 autocast, with and without
    checkpointing; ``forward(batch)`` returns the loss."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    out = {}
    for checkpointing in (False, True):
        set_checkpointing(model, checkpointing)
        for precision in ("fp32", "bf16"):
            autocast = torch.autocast("cpu", torch.bfloat16) if precision == "bf16" else None
            sizes = []
            for batch in (1, 2):
                with autocast or contextlib.nullcontext():
                    sizes.append(saved_bytes(lambda b=batch: forward(b), params))
            slope = sizes[1] - sizes[0]
            key = f"{precision}{', checkpointing' if checkpointing else ''}"
            out[key] = (sizes[0] - slope, slope)
            log.info("%s %s: %.2f GB at batch 1", type(model).__name__, key, sizes[0] / GB)
    set_checkpointing(model, False)
    return out


def set_checkpointing(model: nn.Module, on: bool) -> None:
    if isinstance(model, MultiModalDiT):
        model.gradient_checkpointing = on
        return
    for unet in model.decoder.unets.values():
        unet.enable_gradient_checkpointing() if on else unet.disable_gradient_checkpointing()


def largest_block(model: nn.Module, unit: type[nn.Module]) -> int:
    """Parameters of the largest ``unit`` submodule (an FSDP shard unit)."""
    sizes = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, unit)]
    return max(sizes, default=0)


def generator_stage(cfg: Config) -> Stage:
    torch.manual_seed(0)
    dit = MultiModalDiT(dit_config(cfg)).train()
    abar = alphas_cumprod(cfg.diffusion)

    def forward(b: int) -> torch.Tensor:
        batch = {
            "z_a": torch.randn(b, *cfg.audio_latent_shape),
            "z_v": torch.randn(b, *cfg.video_latent_shape),
            "label": torch.zeros(b, dtype=torch.long),
        }
        if cfg.dit.long:
            batch.update(
                prev_a=torch.randn_like(batch["z_a"]), has_prev=torch.ones(b, dtype=torch.bool)
            )
            batch["prev_v"] = torch.randn_like(batch["z_v"])
        return generator_loss(dit, batch, cfg, abar, BatchRandom(0))[0]

    n = sum(p.numel() for p in dit.parameters())
    block = largest_block(dit, DiTBlock)  # accelerate/fsdp_generator.yaml's shard unit
    return Stage("generator (DiT)", n, 0, n, block, measure(dit, forward))


def autoencoder_stage(cfg: Config) -> Stage:
    torch.manual_seed(0)
    model = MultiModalAutoencoder(autoencoder_config(cfg)).train()
    vae = build_vae(cfg.vae)
    s, r, c = cfg.data.resolution, cfg.vae_latent_size, cfg.vae.latent_channels
    k, n = len(cfg.autoencoder.key_frames), cfg.autoencoder.target_frames

    def forward(b: int) -> torch.Tensor:
        inputs = VAEInputs(
            key_latents=torch.randn(b, k, c, r, r),
            audio_image=torch.rand(b, 3, s, s) * 2 - 1,
            audio_latent=torch.randn(b, c, r, r),
            target_index=torch.arange(n).repeat(b, 1),
            target_frames=torch.rand(b, n, 3, s, s) * 2 - 1,
            target_latents=torch.randn(b, n, c, r, r),
        )
        return autoencoder_loss(model, inputs, torch.zeros(b, dtype=torch.long), cfg)[0]

    trainable = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in vae.parameters())
    # one unit per model (fsdp_autoencoder.yaml): the whole autoencoder is gathered
    return Stage(
        "autoencoder (decoder UNet)", trainable, frozen, 0, trainable, measure(model, forward)
    )


def per_gpu(stage: Stage, strategy: str, activations: tuple[float, float], batch: int) -> float:
    """Bytes on one GPU (see the module docstring for what the formula holds)."""
    if strategy == "DDP":  # weights, grads, Adam m and v, gradient buckets
        states = 20 * stage.trainable
    else:  # the same sharded (no buckets), one unit's weights and grads gathered whole
        states = 16 * stage.trainable / FSDP_GPUS + 8 * stage.largest_block
    a, b = activations
    return states + 4 * stage.ema + 4 * stage.frozen + a + b * batch


def tables(stage: Stage) -> str:
    lines = [
        f"{stage.name}: {stage.trainable / 1e6:.0f}M trainable parameters (formula: states), "
        f"{stage.frozen / 1e6:.0f}M frozen, EMA {stage.ema / 1e6:.0f}M, largest FSDP unit "
        f"{stage.largest_block / 1e6:.0f}M; activations measured (CPU, batch 1 and 2)"
    ]
    headers = ["strategy", "activations", *[f"B={b}" for b in BATCHES], *GPUS]
    rows = []
    for strategy, label in (("DDP", "DDP"), ("FSDP", f"FSDP x{FSDP_GPUS}")):
        for key, act in stage.activations.items():
            gb = [per_gpu(stage, strategy, act, b) / GB for b in BATCHES]
            fits = [max_batch(stage, strategy, act, cap) for cap in GPUS.values()]
            rows.append([label, key, *(f"{x:.1f}" for x in gb), *fits])
    lines.append(format_table(headers, rows, title="GB per GPU; largest batch per GPU"))
    return "\n".join(lines)


def max_batch(stage: Stage, strategy: str, act: tuple[float, float], capacity: float) -> str:
    a, b = act
    room = USABLE * capacity - per_gpu(stage, strategy, (a, 0.0), 0)
    if room < b:
        return "0"
    fits = math.floor(room / b)
    return str(fits) if fits <= 4096 else "> 4096"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper_landscape", help="a preset or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--stages", default="generator,autoencoder")
    parser.add_argument("--out", default=str(RESULTS_DIR / "memory.json"))
    parser.add_argument(
        "--report", help="print the tables of an earlier --out file instead of measuring"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.report:
        for stage in json.loads(Path(args.report).read_text())["stages"]:
            stage["activations"] = {k: tuple(v) for k, v in stage["activations"].items()}
            print(tables(Stage(**stage)), end="\n\n")
        return
    cfg = load_config(args.config, args.overrides)
    builders = {"generator": generator_stage, "autoencoder": autoencoder_stage}
    stages = [builders[name](cfg) for name in args.stages.split(",")]
    for stage in stages:
        print(tables(stage), end="\n\n")
    report = {
        "machine": machine_info(),
        "config": cfg.name,
        "fsdp_gpus": FSDP_GPUS,
        "usable_fraction": USABLE,
        "stages": [vars(s) for s in stages],
    }
    print(f"wrote {write_json(args.out, report)}")


if __name__ == "__main__":
    main()
