"""What every training stage shares: accelerate set-up, exactly resumable data order,
learning-rate warm-up, EMA, and checkpoints with the full training state.

Exact resume: the data order of epoch e is a permutation seeded by (seed, e), sharded across
processes; a resumed run skips the batches its checkpoint had consumed. The generator's draws
(noise, timesteps, condition drops) come from (seed, step) for the whole global batch
(:class:`BatchRandom`), so they do not depend on the number of processes either; the other
stages' draws (noise, timesteps, dropout, flips) come from the global RNGs, whose states (one
per process) are saved in the checkpoint. So a run killed and resumed matches an uninterrupted
one, and a generator trained on N processes matches one process given the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    FullyShardedDataParallelPlugin,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mmldm.audio.mel import audio_image
from mmldm.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from mmldm.config import Config, ConfigError, StageTrainConfig, load_config
from mmldm.console import progress
from mmldm.data.media import write_video
from mmldm.run import RunLogger
from mmldm.train.starting_weights import check_starting_weights
from mmldm.viz import save_grid
from mmldm.weights import CheckpointError, load_weights, upgrade_state_dict

if TYPE_CHECKING:  # previews decode with a codec they are given
    from mmldm.codec import Codec

log = logging.getLogger(__name__)


def training_precision(cfg: Config) -> tuple[str, str | None]:
    """(the mixed precision a run trains in, a warning or None).

    ``train.mixed_precision`` wins when it names one. ``auto`` follows a launcher that asks for
    reduced precision (``accelerate launch --mixed_precision bf16``, or its config file's: it
    passes it on as ACCELERATE_MIXED_PRECISION), and otherwise takes bf16 on a GPU and fp32 on
    the CPU: ``accelerate launch`` without the flag says "no" too, so "no" from the launcher
    cannot mean fp32 on purpose (``train.mixed_precision=no`` does)."""
    asked = cfg.train.mixed_precision
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if asked == "auto":
        if launcher not in (None, "no"):
            return launcher, None
        return ("bf16" if torch.cuda.is_available() else "no"), None
    if launcher not in (None, asked):
        return asked, (
            f"train.mixed_precision={asked} (config) overrides the launcher's mixed precision "
            f"{launcher}; set train.mixed_precision=auto to follow the launcher"
        )
    return asked, None


def check_trackers(names: list[str]) -> None:
    """ConfigError naming a ``train.log_with`` tracker that accelerate does not know or whose
    package is not installed (accelerate itself drops those without a word)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    available = {str(t) for t in get_available_trackers()}
    for name in set(names) - {"all"}:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(
                f"config key 'train.log_with': unknown tracker {name!r} (one of "
                f"{', '.join(LoggerType.list())})"
            )
        if name not in available:
            raise ConfigError(
                f"config key 'train.log_with' names {name}, which is not installed here "
                f"(pip install {name}), or remove it"
            )


def make_accelerator(cfg: Config, stage: StageTrainConfig, run: Path) -> Accelerator:
    """One process, several GPUs / nodes (``accelerate launch``, torchrun) or 2 CPU processes;
    its trackers (``train.log_with``) write under ``run / "logs"``."""
    check_trackers(cfg.train.log_with)
    precision, warning = training_precision(cfg)
    accelerator = Accelerator(
        # without a GPU, say so: accelerate then runs torchrun / launch processes over gloo
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        gradient_accumulation_steps=stage.grad_accum,
        log_with=list(cfg.train.log_with) or None,
        project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")),
        # unused parameters are legitimate: e.g. the discriminator before it starts
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if accelerator.is_main_process:
        if warning:
            log.warning(warning)
        log.info("mixed precision: %s", accelerator.mixed_precision)
    if (
        not torch.cuda.is_available()
        and accelerator.num_processes > 1
        and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    ):
        # accelerate turns FSDP on for accelerators only; torch's FSDP2 also runs on CPU
        # processes over gloo, so an FSDP launch config works on a CPU machine too
        # (both states: AcceleratorState copies PartialState's whenever it is instantiated)
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState().distributed_type = DistributedType.FSDP
        plugin = FullyShardedDataParallelPlugin()  # from the launch environment
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        accelerator.state.fsdp_plugin = plugin
    set_seed(cfg.train.seed + accelerator.process_index)
    if not accelerator.is_main_process:  # one process reports; the others only warn
        logging.getLogger("mmldm").setLevel(logging.WARNING)
    return accelerator


class EpochSampler(Sampler[int]):
    """A per-epoch permutation seeded by (seed, epoch), this process's shard, from a batch on."""

    def __init__(self, size: int, seed: int, rank: int, world: int, batch_size: int) -> None:
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.batch_size = batch_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return (self.size // self.world) // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        shard = order[
            self.rank : self.batches_per_epoch * self.batch_size * self.world : self.world
        ]
        return shard[self.start_batch * self.batch_size :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def batches(
    dataset: Dataset, sampler: EpochSampler, batch_size: int, num_workers: int, start_step: int
) -> Iterator[dict]:
    """Endless batches, continuing the data order of an interrupted run at ``start_step``."""
    per_epoch = sampler.batches_per_epoch
    if per_epoch == 0:
        raise ValueError(
            f"the dataset has {sampler.size} clips: too few for batch size {batch_size} on "
            f"{sampler.world} process(es)"
        )
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch, offset)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            # its own generator: creating the iterator must not draw from the global RNG,
            # whose state a resumed run restores at a different point of the epoch
            generator=torch.Generator().manual_seed(sampler.seed + epoch),
        )
        yield from loader
        epoch, offset = epoch + 1, 0


class BatchRandom:
    """One training step's random draws, made for the whole global batch from (seed, step):
    each process keeps the rows of its own samples, rows ``rank, rank + world, ...`` (how
    :class:`EpochSampler` deals a global batch out). A sample's noise then does not depend on
    how many processes share the batch, and N processes reproduce one process's run.

    Every process draws the global batch (``world`` times its own rows): cheap for latents.
    With ``seed=None``, draws come from torch's global RNG, for one process.
    """

    def __init__(
        self,
        seed: int | None,
        step: int = 0,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        self.rank, self.world, self.device = rank, world, torch.device(device)

    def _mine(self, draw: Callable[..., torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        full = draw((shape[0] * self.world, *shape[1:]), generator=self.generator)
        return full[self.rank :: self.world].to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        return self._mine(torch.randn, shape)

    def rand(self, *shape: int) -> torch.Tensor:
        return self._mine(torch.rand, shape)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        def draw(size: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
            return torch.randint(high, size, generator=generator)

        return self._mine(draw, shape)


def lr_at(step: int, stage: StageTrainConfig) -> float:
    """Linear warm-up, then constant (the published configs) or a cosine decay to
    ``stage.min_lr_ratio * lr`` at ``max_steps`` (``stage.lr_schedule``)."""
    if stage.warmup_steps and step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    if stage.lr_schedule == "cosine":
        span = max(1, stage.max_steps - stage.warmup_steps)
        progress = min(1.0, (step - stage.warmup_steps) / span)
        floor = stage.min_lr_ratio
        return stage.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    return stage.lr


def make_optimizer(params, stage: StageTrainConfig) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all tensors: 3x faster than the per-tensor loop on a CPU
    for the demo's many small tensors) where this torch has it for the parameters' device."""
    params = [p for p in params if p.requires_grad]
    kwargs = dict(lr=stage.lr, betas=tuple(stage.betas), weight_decay=stage.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # e.g. an older torch without fused CPU kernels
        return torch.optim.AdamW(params, **kwargs)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a DTensor: gathered from every process, so every
    process must call this), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@contextlib.contextmanager
def initial_weights(cfg: Config) -> Iterator[None]:
    """Networks built inside are initialised from ``train.seed`` alone, the same on every
    process: DDP broadcasts process 0's weights, FSDP does not (each process keeps the shards
    it initialised). Each process's own random stream then continues as it was."""
    with torch.random.fork_rng(devices=[]):  # the CPU generator, where networks are built
        torch.default_generator.manual_seed(cfg.train.seed)  # (not CUDA's: those stay per rank)
        yield


# --------------------------------------------------------------------------------------------
# State dicts under FSDP2: a sharded module's weights and optimizer state are gathered into full
# tensors for a checkpoint (the same files as without FSDP; on the main process, which writes
# them) and scattered from full tensors on resume. Every process takes part in both.
# --------------------------------------------------------------------------------------------

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(module: nn.Module) -> bool:
    """True for a module whose parameters FSDP sharded (DTensors)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def full_state_dict(accelerator: Accelerator, module: nn.Module | Mapping) -> Mapping:
    """A module's whole state dict for a checkpoint (a tensor dict passes through)."""
    if not isinstance(module, nn.Module):
        return module
    if is_sharded(module):
        return get_model_state_dict(module, options=_FULL)
    return accelerator.unwrap_model(module).state_dict()


def optimizer_state(module: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """An optimizer's whole state for a checkpoint; that of a sharded ``module`` is keyed by
    parameter names, with full tensors."""
    if is_sharded(module):
        return get_optimizer_state_dict(module, opt, options=_FULL)
    return opt.state_dict()


def load_module_state(
    accelerator: Accelerator, module: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Full weights from a checkpoint into ``module`` (each process keeps its shards)."""
    if is_sharded(module):
        state = upgrade_state_dict(state, module.state_dict())
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
    else:
        load_weights(accelerator.unwrap_model(module), state, source=source)


def _rekeyed(state: dict, key: Mapping | list) -> dict:
    """An optimizer state dict with each parameter key ``k`` replaced by ``key[k]`` (positions
    -> names with a list of names, names -> positions with a dict)."""
    return {
        "state": {key[k]: v for k, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [key[k] for k in g["params"]]} for g in state["param_groups"]
        ],
    }


def load_optimizer_state(module: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """An optimizer state from a checkpoint, written with FSDP (keyed by parameter names) or
    without (by position), into ``opt`` of ``module``, sharded or not."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]  # the optimizer's order
    by_position = all(isinstance(k, int) for k in state["state"])
    if is_sharded(module):
        if by_position:
            state = _rekeyed(state, names)
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(module, opt, state, options=options)
        return
    if not by_position:  # written under FSDP: positions from the names
        state = _rekeyed(state, {name: i for i, name in enumerate(names)})
    opt.load_state_dict(state)
    for group in opt.param_groups:  # moments of a scalar saved before it became 1-D
        for p in group["params"]:
            moments = opt.state.get(p, {})
            for key, value in moments.items():
                if key != "step" and torch.is_tensor(value) and value.shape != p.shape:
                    moments[key] = value.reshape(p.shape)


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after ``step`` optimizer steps: ``min(decay, (1 + step) / (10 + step))``,
    the warm-up of diffusers' ``EMAModel``. A constant 0.9999 from step 0 would leave the random
    initial weights 82% of the average at step 2k and 37% at 10k; with the warm-up the average
    spans about a tenth of the steps so far until it reaches ``decay`` (0.9999: at 90k)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model``; under FSDP the EMA stays whole on every
    process and the model's shards are gathered for it (every process calls this)."""
    ema_params = list(ema.parameters())
    params = [
        full_tensor(p.detach()).to(e.dtype)
        for e, p in zip(ema_params, model.parameters(), strict=True)
    ]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)  # one fused update, not one per tensor
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def resume_training(
    accelerator: Accelerator,
    run: Path,
    kind: str,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> int:
    """Load the latest checkpoint of ``run`` into modules and optimizers; returns its step."""
    ckpt = load_checkpoint(run, kind=kind)
    for name, module in modules.items():
        load_module_state(accelerator, module, ckpt.state_dict(name), str(ckpt.path))
    state = ckpt.training_state()
    if state is None:
        raise CheckpointError(f"{ckpt.path}: no training state beside it, cannot resume")
    for name, opt in optimizers.items():  # each optimizer steps the module of its name
        module = accelerator.unwrap_model(modules[name])
        load_optimizer_state(module, opt, state["optimizers"][name])
    rng = state["rng"]
    if len(rng) != accelerator.num_processes:
        log.warning(
            "resuming on %d processes a run saved on %d: data order and random draws continue "
            "but are not bit-identical to an uninterrupted run",
            accelerator.num_processes,
            len(rng),
        )
    restore_rng_state(rng[accelerator.process_index % len(rng)])
    log.info("resumed %s from %s at step %d", kind, ckpt.path, ckpt.step)
    return ckpt.step


def training_dataset(data, cfg: Config, cache_dir, accelerator: Accelerator):
    """The clips of ``data``; with a cache folder, every video is decoded into it once first."""
    from mmldm.data.dataset import SoundingVideoDataset

    dataset = SoundingVideoDataset(data, cfg.data, cache_dir=cache_dir)
    if cache_dir is not None:
        if accelerator.is_main_process:
            dataset.preprocess()
        accelerator.wait_for_everyone()
    return dataset


def start_clip_stage(
    cfg: Config, stage: str, data, cache_dir, run: Path, resume: bool
) -> tuple[Accelerator, Dataset]:
    """How the stages that train on clips (vae, autoencoder, distill) start: the accelerator of
    the ``train.<stage>`` settings (:func:`make_accelerator`), then the clips of ``data``
    (:func:`training_dataset`, decoded into ``cache_dir`` first when one is given)."""
    if not resume:  # a resumed run's weights come from its checkpoint
        check_starting_weights(cfg, stage)  # before anything is built or read
    accelerator = make_accelerator(cfg, getattr(cfg.train, stage), run)
    return accelerator, training_dataset(data, cfg, cache_dir, accelerator)


def data_metadata(dataset: Dataset) -> dict[str, str]:
    """Where a stage's training clips came from (a clip dataset, or a latent cache that names
    the clips it encoded), kept in its checkpoints for the model card of ``mmldm export``."""
    meta = getattr(dataset, "meta", {})
    source = meta.get("source", getattr(dataset, "source", None))
    classes = meta.get("classes", getattr(dataset, "classes", []))
    recorded = {
        "mmldm.data_clips": str(len(dataset)),  # type: ignore[arg-type]
        "mmldm.data_classes": json.dumps([str(c) for c in classes]),
    }
    return recorded if source is None else {"mmldm.data": str(source), **recorded}


class TrainingLoop:
    """The loop every stage shares: resume, data order, learning rate, progress, logging and
    checkpoints. A stage writes only its forward pass::

        loop = TrainingLoop(accelerator, cfg, "autoencoder", run, dataset, modules, optimizers)
        for batch in loop:                      # on the device, learning rates set
            logs, _ = train_step(accelerator, objective, opt, loss_fn, ...)
            loop.end_step(logs)                 # progress, metrics, checkpoints
            loop.preview(write)                 # every train.sample_every steps: write(folder)
        return loop.close()

    Args:
        stage: "vae" | "autoencoder" | "generator": the ``train.<stage>`` settings and the
            checkpoint kind.
        modules: what checkpoints hold (modules or tensor dicts); optimizers: by name.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        cfg: Config,
        stage: str,
        run: Path,
        dataset: Dataset,
        modules: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
        optimizers: Mapping[str, torch.optim.Optimizer],
        *,
        resume: bool = False,
        max_steps: int | None = None,
        num_workers: int = 0,
        extra_metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.accelerator, self.cfg, self.kind, self.run = accelerator, cfg, stage, run
        self.settings = getattr(cfg.train, stage)
        self.modules, self.optimizers = modules, optimizers
        self.extra_metadata = {**data_metadata(dataset), **(extra_metadata or {})}
        self.total = max_steps or self.settings.max_steps
        trainable = {k: m for k, m in modules.items() if isinstance(m, nn.Module)}
        self.step = resume_training(accelerator, run, stage, trainable, optimizers) if resume else 0
        sampler = EpochSampler(
            len(dataset),
            cfg.train.seed,
            accelerator.process_index,
            accelerator.num_processes,
            self.settings.batch_size,
        )
        self.stream = batches(dataset, sampler, self.settings.batch_size, num_workers, self.step)
        self.logger = RunLogger(
            run,
            cfg,
            resume_step=self.step if resume else None,
            main_process=accelerator.is_main_process,
            accelerator=accelerator,
            project=f"mmldm-{stage}",
        )
        self.clock = Throughput(self.step, self.total)
        self.bar = progress(total=self.total, initial=self.step, desc=stage)
        self.last: Path | None = None
        self.warned_previews = False

    def __iter__(self) -> Iterator[dict]:
        device = self.accelerator.device
        while self.step < self.total:
            batch = next(self.stream)
            for opt in self.optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr_at(self.step, self.settings)
            yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def mean_over_processes(self, logs: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes that logged it (their batches are equal in
        size): the loss of the global batch, as one process given it would log. Every process
        calls this."""
        if self.accelerator.num_processes == 1:
            return logs
        every = gather_object([logs])  # a term may be missing on some (e.g. no labels there)
        keys = dict.fromkeys(k for one in every for k in one)
        return {k: sum(one[k] for one in every if k in one) / sum(k in one for one in every)
                for k in keys}  # fmt: skip

    def saves_next(self) -> bool:
        """True when the step in progress (ended by the next ``end_step``) writes a checkpoint."""
        step = self.step + 1
        return step % self.cfg.train.checkpoint_every == 0 or step == self.total

    def end_step(self, logs: dict[str, float]) -> None:
        save = self.saves_next()
        self.step += 1
        self.bar.update(1)
        if self.step % self.cfg.train.log_every == 0 or self.step == self.total:
            logs = self.mean_over_processes(logs)
            logs["lr"] = next(iter(self.optimizers.values())).param_groups[0]["lr"]
            self.logger.log(self.step, logs)
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", left=self.clock.eta(self.step))
            if self.bar.disable:  # no progress bar (not a terminal): a log line instead
                log.info(
                    "%s step %d/%d loss %.4f (%s left)",
                    self.kind,
                    self.step,
                    self.total,
                    logs["loss"],
                    self.clock.eta(self.step),
                )
        if save:
            self.last = self.save()

    def save(self) -> Path | None:
        """Gather every process's RNG state and write one checkpoint of this step from the main
        process (its folder there, None on the others)."""
        accelerator = self.accelerator
        rng = gather_object([capture_rng_state()])  # one state per process, in rank order
        # every process takes part: under FSDP this gathers the full weights
        states = {k: full_state_dict(accelerator, m) for k, m in self.modules.items()}
        optimizers = {k: optimizer_state(self.modules[k], o) for k, o in self.optimizers.items()}
        counts = {
            k: sum(p.numel() for p in accelerator.unwrap_model(m).parameters())
            for k, m in self.modules.items()
            if isinstance(m, nn.Module)
        }
        metadata = {"mmldm.parameters": json.dumps(counts), **self.extra_metadata}
        path = None
        if accelerator.is_main_process:
            path = save_checkpoint(
                self.run / "checkpoints",
                modules=states,
                config=self.cfg,
                kind=self.kind,
                step=self.step,
                training_state={
                    "optimizers": optimizers,
                    "rng": list(rng),
                    "world_size": accelerator.num_processes,
                },
                keep_last=self.cfg.train.keep_last,
                extra_metadata=metadata,
            )
        accelerator.wait_for_everyone()
        return path

    def due(self, every: int) -> bool:
        """True on the steps where something done every ``every`` steps (and at the end) runs."""
        return self.step % every == 0 or self.step == self.total

    def preview(self, write: Callable[[Path], None], model: nn.Module | None = None) -> None:
        """Every ``train.sample_every`` steps (and at the end): ``write(folder)`` on the main
        process, into ``RUN/samples/step_<8-digit step>``; the other processes wait for it.
        ``model``: what ``write`` runs; one that FSDP sharded cannot run on one process, so
        there are no previews then (the checkpoints sample as usual)."""
        if not self.due(self.cfg.train.sample_every):
            return
        if model is not None and is_sharded(model):
            if not self.warned_previews and self.accelerator.is_main_process:
                log.warning("no previews under FSDP: %s is sharded across processes", self.kind)
            self.warned_previews = True
            return
        if self.accelerator.is_main_process:
            write(self.run / "samples" / f"step_{self.step:08d}")
        self.accelerator.wait_for_everyone()

    def close(self) -> Path:
        self.bar.close()
        self.logger.close()
        self.accelerator.end_training()
        return self.last if self.last is not None else self.run


def run_config(run: Path, config: str | None, overrides: list[str], resume: bool) -> Config:
    """The config of a (resumed) run: a resumed run keeps its stored config, new overrides are
    refused so that the resumed run is the same run."""
    stored = run / "config.yaml"
    if resume:
        if not stored.is_file():
            raise FileNotFoundError(f"{run}: no config.yaml, not a run folder to resume")
        if config is not None or overrides:
            raise ConfigError("--resume continues a run with its own config: drop --config/--set")
        return load_config(stored)
    return load_config(config, overrides)


class Throughput:
    """Seconds per step and an estimate of the time left, for the progress line."""

    def __init__(self, start_step: int, max_steps: int) -> None:
        self.t0, self.s0, self.max_steps = time.perf_counter(), start_step, max_steps

    def eta(self, step: int) -> str:
        done = step - self.s0
        if done <= 0:
            return "?"
        left = (time.perf_counter() - self.t0) / done * (self.max_steps - step)
        return f"{int(left // 60)}m{int(left % 60):02d}s"


def finite_or_raise(loss: torch.Tensor, step: int) -> None:
    value = loss.detach().float().item()
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}")


def optimizer_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    grad_clip: float,
    step: int,
) -> None:
    """Backward, gradient clipping to ``grad_clip`` (0: none) when the accumulated gradients
    sync, optimizer step, zero; a loss that is not finite stops training at ``step``."""
    finite_or_raise(loss, step)
    accelerator.backward(loss)
    if grad_clip and accelerator.sync_gradients:
        accelerator.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step(
    accelerator: Accelerator,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[], tuple],
    *,
    grad_clip: float,
    step: int,
    disc: nn.Module | None = None,
    disc_opt: torch.optim.Optimizer | None = None,
    disc_loss: Callable[[Any], torch.Tensor] | None = None,
) -> tuple[dict[str, float], Any]:
    """One optimisation step of a stage, as its trainer runs it and the benchmarks time it.

    ``loss_fn()`` is the forward of ``module``: ``(loss, logs)`` or ``(loss, logs, extra)``.
    Its loss is back-propagated under accelerate's gradient accumulation and autocast
    (:func:`optimizer_step`). With a discriminator, ``disc_loss(extra)`` then gets a step of its
    own, unclipped, unless ``extra`` is None (the discriminator is off). Returns (logs, extra).
    """
    with accelerator.accumulate(module), accelerator.autocast():
        loss, logs, *rest = loss_fn()
        optimizer_step(accelerator, loss, module, opt, grad_clip, step)
    extra = rest[0] if rest else None
    if disc is not None and extra is not None:
        disc_opt.zero_grad(set_to_none=True)  # drop what the generator's term left there
        with accelerator.accumulate(disc), accelerator.autocast():
            d_loss = disc_loss(extra)
            optimizer_step(accelerator, d_loss, disc, disc_opt, 0.0, step)
        logs["loss_gan_d"] = d_loss.item()
    return logs, extra


def prepare_adversarial(
    accelerator: Accelerator,
    cfg: Config,
    stage: str,
    objective: nn.Module,
    opt: torch.optim.Optimizer,
    disc: nn.Module | None,
):
    """accelerate-prepares ``objective`` with ``opt`` and, when given, ``disc`` with an
    optimizer of its own (``train.<stage>`` settings), handed to the objective as
    ``aux["discriminator"]``. Returns (objective, opt, disc, disc_opt), prepared; the last two
    are None without a discriminator."""
    if disc is None:
        objective, opt = accelerator.prepare(objective, opt)
        return objective, opt, None, None
    disc_opt = make_optimizer(disc.parameters(), getattr(cfg.train, stage))
    # one model per call: what FSDP2 accepts (each optimizer follows its model's sharding)
    objective, opt = accelerator.prepare(objective, opt)
    disc, disc_opt = accelerator.prepare(disc, disc_opt)
    accelerator.unwrap_model(objective).aux["discriminator"] = accelerator.unwrap_model(disc)
    return objective, opt, disc, disc_opt


def adversarial_stage(
    accelerator: Accelerator,
    cfg: Config,
    stage: str,
    run: Path,
    dataset: Dataset,
    objective: nn.Module,
    opt: torch.optim.Optimizer,
    modules: Mapping[str, nn.Module],
    disc: nn.Module | None,
    *,
    resume: bool = False,
    max_steps: int | None = None,
):
    """The set-up the stages with an optional discriminator share (VAE, autoencoder):
    :func:`prepare_adversarial`, then the :class:`TrainingLoop` that saves ``modules`` (the
    first one's optimizer is ``opt``) and the discriminator. Returns (loop, objective, opt,
    disc, disc_opt), prepared; the last two are None without a discriminator.
    """
    objective, opt, disc, disc_opt = prepare_adversarial(
        accelerator, cfg, stage, objective, opt, disc
    )
    modules = dict(modules)
    optimizers = {next(iter(modules)): opt}
    if disc is not None:
        modules["discriminator"], optimizers["discriminator"] = disc, disc_opt
    loop = TrainingLoop(
        accelerator,
        cfg,
        stage,
        run,
        dataset,
        modules,
        optimizers,
        resume=resume,
        max_steps=max_steps,
        num_workers=cfg.data.num_workers,
    )
    return loop, objective, opt, disc, disc_opt


@torch.no_grad()
def write_reconstructions(
    codec: Codec, video: torch.Tensor, audio: torch.Tensor, folder: Path, num: int = 2
) -> None:
    """Encode and decode a few clips of the batch: mp4s with sound and a PNG grid (rows:
    original frames + audio image, then their reconstructions)."""
    cfg, model = codec.cfg, codec.autoencoder
    was_training = model.training
    model.eval()
    video, audio = video[:num].float(), audio[:num].float()
    z_a, z_v = codec.encode(video, audio)
    out = codec.decode(z_a, z_v, generator=torch.Generator(video.device).manual_seed(0))

    audio_images = audio_image(audio, cfg.data)  # the originals' (no second VAE pass)
    rows, labels = [], []
    for i in range(len(video)):
        write_video(
            folder / f"recon_{i}.mp4",
            out.frames[i].permute(0, 2, 3, 1).cpu().numpy(),
            cfg.data.fps,
            out.wave[i].cpu().numpy(),
            out.sample_rate,
        )
        rows += [[*video[i], audio_images[i]], [*out.frames[i], out.audio_image[i]]]
        labels += [f"clip {i}", f"recon {i}"]
    save_grid(rows, folder / "grid.png", labels)
    model.train(was_training)
    log.info("wrote reconstructions to %s", folder)
