"""CPU timings of MM-LDM's training and sampling steps (median of repeated runs after warm-up).

Sections (every model randomly initialised; the numbers measure compute, not quality):

1. ``tiny`` config: a DiT training step (generator loss, backward, gradient clipping, AdamW,
   EMA), a guided DiT sampling step (conditional + null forward, as a2v / v2a sample), an
   autoencoder training step as the training loop runs it (VAE encoding of key / target frames
   and the audio image, loss with the adversarial term, backward, AdamW; then the discriminator
   step) and a guided signal-decoder sampling step (all frames + the audio image, x2 for
   classifier-free guidance).
2. DiT-S of the paper config (``paper_landscape`` with ``dit.size=S``), DiT only: training step at
   batch 1 and 2, sampling step at batch 1 (svg: one forward; guided: two). The paper's
   autoencoder is too big for a CPU training step; one forward of its signal-decoder UNet at
   batch 1 (one latent) is timed instead, unless its warm-up run takes longer than 60 s.
3. The whole sampling pipeline (DiT sampling, signal decoding, VAE decoding, vocoder) of the
   ``demo`` config, ``MMLDMPipeline`` built from modules, with the Griffin-Lim vocoder and with a
   randomly initialised HiFi-GAN V1 (its hop 256 and 80 mels match the demo's 16 kHz mel).

``torch.set_num_threads`` is left as it is unless ``--threads`` is given. On a shared machine,
other processes competing for the cores slow small ops down badly (OpenMP threads spin while
waiting), so the load average before and after each section is stored with the results.

    .venv/bin/python benchmarks/cpu_timings.py [--quick] [--out benchmarks/results/cpu_timings.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from common import (
    RESULTS_DIR,
    Timing,
    count_params,
    cpu_model,
    fmt,
    format_table,
    load_average,
    random_pipeline,
    time_cpu,
    write_json,
)

from mmldm.codec import autoencoder_config, batch_inputs, build_vae
from mmldm.config import Config, load_config
from mmldm.diffusion.schedule import alphas_cumprod
from mmldm.models.autoencoder import MultiModalAutoencoder
from mmldm.models.discriminator import TripletDiscriminator
from mmldm.models.dit import DiTInputs, MultiModalDiT
from mmldm.networks import discriminator_config, dit_config
from mmldm.train.autoencoder import Objective, autoencoder_step
from mmldm.train.common import make_optimizer, prepare_adversarial
from mmldm.train.generator import generator_step

DECODER_LIMIT_S = 60.0  # skip repeats of the paper decoder's forward beyond this (the brief)


@dataclasses.dataclass
class Result:
    section: str
    name: str
    batch: int
    timing: Timing | None
    note: str = ""
    params: int | None = None

    def row(self) -> list[str]:
        t = self.timing
        return [
            self.section,
            self.name,
            str(self.batch),
            "-" if self.params is None else f"{self.params / 1e6:.2f}M",
            "-" if t is None else fmt(t.median * 1e3),
            "-" if t is None else fmt(t.min * 1e3),
            "-" if t is None else str(len(t.runs)),
            self.note,
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "batch": self.batch,
            "params": self.params,
            "note": self.note,
            **(self.timing.to_dict() if self.timing is not None else {"skipped": True}),
        }


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def cpu_accelerator(stage) -> Accelerator:
    """The trainers' step functions run under accelerate; here on the CPU in fp32 whatever the
    machine has (these are CPU timings), with the stage's gradient accumulation."""
    return Accelerator(cpu=True, mixed_precision="no", gradient_accumulation_steps=stage.grad_accum)


def latent_batch(cfg: Config, b: int) -> dict[str, torch.Tensor]:
    """Normalised latents as the latent cache yields them."""
    return {
        "z_a": torch.randn(b, *cfg.audio_latent_shape),
        "z_v": torch.randn(b, *cfg.video_latent_shape),
        "label": torch.randint(0, max(1, cfg.data.num_classes), (b,)),
    }


def dit_train_step(cfg: Config, b: int) -> tuple[Callable[[], None], int]:
    """One generator training step: :func:`generator_step`, the trainer's own, with its model
    and optimizer prepared by accelerate as in ``train_generator``."""
    stage = cfg.train.generator
    accelerator = cpu_accelerator(stage)
    model = MultiModalDiT(dit_config(cfg)).train()
    ema = copy.deepcopy(model).requires_grad_(False) if stage.ema_decay > 0 else None
    model, opt = accelerator.prepare(model, make_optimizer(model.parameters(), stage))
    abar = alphas_cumprod(cfg.diffusion)
    batch = latent_batch(cfg, b)

    def step() -> None:
        generator_step(accelerator, model, opt, batch, cfg, abar, 0, ema)

    return step, count_params(model)


def dit_sample_step(
    cfg: Config, b: int, guided: bool, model: MultiModalDiT | None = None
) -> tuple[Callable[[], None], int]:
    """One sampler call of the DiT: the conditional forward, and the null one when guided."""
    model = (model or MultiModalDiT(dit_config(cfg))).eval()
    z_a = torch.randn(b, *cfg.audio_latent_shape)
    z_v = torch.randn(b, *cfg.video_latent_shape)
    t = torch.full((b,), 500, dtype=torch.long)
    cond = DiTInputs(z_a, z_v, t, cond_a=torch.randn_like(z_a), cond_v=torch.zeros_like(z_v))
    null = DiTInputs(z_a, z_v, t, cond_a=torch.zeros_like(z_a), cond_v=torch.zeros_like(z_v))

    @torch.no_grad()
    def step() -> None:
        model(cond)
        if guided:
            model(null)

    return step, count_params(model)


def clips(cfg: Config, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random clips: video ``[B, F, 3, S, S]``, audio ``[B, N]``, labels ``[B]``."""
    d = cfg.data
    video = torch.rand(b, d.num_frames, 3, d.resolution, d.resolution) * 2 - 1
    audio = (torch.rand(b, int(round(d.clip_seconds * d.sample_rate))) * 2 - 1) * 0.5
    labels = torch.randint(0, max(1, d.num_classes), (b,))
    return video, audio, labels


def autoencoder_train_step(cfg: Config, b: int) -> tuple[Callable[[], None], int]:
    """One autoencoder step as ``train_autoencoder`` runs it (:func:`autoencoder_step`, the
    VAE inputs of the batch included; GAN on from step 0)."""
    stage = cfg.train.autoencoder
    cfg = dataclasses.replace(
        cfg, discriminator=dataclasses.replace(cfg.discriminator, start_step=0)
    )
    accelerator = cpu_accelerator(stage)
    vae = build_vae(cfg.vae).eval().requires_grad_(False)
    model = MultiModalAutoencoder(autoencoder_config(cfg)).train()
    objective = Objective(model, cfg)
    objective.aux["vae"] = vae
    disc = (
        TripletDiscriminator(discriminator_config(cfg)) if cfg.autoencoder.gan_weight > 0 else None
    )
    opt = make_optimizer(model.parameters(), stage)
    prepared = prepare_adversarial(accelerator, cfg, "autoencoder", objective, opt, disc)
    objective, opt, disc, disc_opt = prepared
    video, audio, labels = clips(cfg, b)
    batch = {"video": video, "audio": audio}

    def step() -> None:
        inputs = batch_inputs(batch, vae, cfg, cfg.autoencoder.target_frames, None)
        autoencoder_step(accelerator, objective, opt, inputs, labels, cfg, 0, disc, disc_opt)

    return step, count_params(model)


def decoder_conditions(model: MultiModalAutoencoder, cfg: Config, b: int):
    """Conditional and null conditions of ``b`` videos, as ``decode_latents`` builds them."""
    dec, f = model.decoder, cfg.data.num_frames
    z_a = torch.randn(b, *cfg.audio_latent_shape)
    z_v = torch.randn(b, *cfg.video_latent_shape)
    with torch.no_grad():
        s_a, s_v = model.semantics(z_a, z_v)
        labels = model.predict_class(s_a, s_v)
        index = torch.arange(f).repeat(b).float() / f

        def rep(x):
            return None if x is None else x.repeat_interleave(f, 0)

        def conds(keep: float):
            ca = dec.condition("audio", z_a, s_v, labels, torch.full((b,), keep))
            cv = dec.condition(
                "video", rep(z_v), rep(s_a), rep(labels), torch.full((b * f,), keep), index
            )
            return ca, cv

        return conds(1.0), conds(0.0)


def decoder_sample_step(cfg: Config, b: int) -> tuple[Callable[[], None], int]:
    """One guided signal-decoder step on ``b`` videos: 2 passes over b x (F + 1) latents."""
    model = MultiModalAutoencoder(autoencoder_config(cfg)).eval()
    dec, f, r = model.decoder, cfg.data.num_frames, cfg.vae_latent_size
    (ca, cv), (na, nv) = decoder_conditions(model, cfg, b)
    c = cfg.vae.latent_channels
    xa, xv = torch.randn(b, c, r, r), torch.randn(b * f, c, r, r)
    ta, tv = torch.full((b,), 500), torch.full((b * f,), 500)

    @torch.no_grad()
    def step() -> None:
        dec.predict_both(xa, ta, ca, xv, tv, cv)
        dec.predict_both(xa, ta, na, xv, tv, nv)

    return step, count_params(dec.unets)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def run_timed(
    results: list[Result],
    section: str,
    name: str,
    batch: int,
    make: Callable[[], tuple[Callable[[], None], int | None]],
    repeats: int,
    note: str = "",
) -> None:
    step, params = make()
    timing = time_cpu(step, repeats, warmup=1)
    results.append(Result(section, name, batch, timing, note, params))
    print(f"  {name} (batch {batch}): median {timing.median * 1e3:,.1f} ms", flush=True)
    del step
    gc.collect()


def tiny_section(results: list[Result], repeats: int) -> None:
    cfg = load_config("tiny")
    sec = "tiny"
    b_gen, b_ae, b_s = (
        cfg.train.generator.batch_size,
        cfg.train.autoencoder.batch_size,
        cfg.sample.batch_size,
    )
    run_timed(
        results,
        sec,
        "DiT train step",
        b_gen,
        lambda: dit_train_step(cfg, b_gen),
        repeats,
        "loss+backward+clip+AdamW+EMA",
    )
    run_timed(
        results,
        sec,
        "DiT sampling step, guided",
        b_s,
        lambda: dit_sample_step(cfg, b_s, guided=True),
        repeats,
        "cond + null forward",
    )
    run_timed(
        results,
        sec,
        "autoencoder train step",
        b_ae,
        lambda: autoencoder_train_step(cfg, b_ae),
        repeats,
        "VAE enc + loss (GAN on) + AdamW + disc. step",
    )
    f = cfg.data.num_frames
    run_timed(
        results,
        sec,
        "signal decoder sampling step, guided",
        b_s,
        lambda: decoder_sample_step(cfg, b_s),
        repeats,
        f"2 passes x {b_s * (f + 1)} latents",
    )


def dit_s_section(results: list[Result], repeats: int) -> None:
    cfg = load_config("paper_landscape", ["dit.size=S"])
    sec = "paper DiT-S"
    for b in (1, 2):
        run_timed(
            results,
            sec,
            "DiT train step",
            b,
            lambda b=b: dit_train_step(cfg, b),
            repeats,
            "loss+backward+clip+AdamW+EMA",
        )
    model = MultiModalDiT(dit_config(cfg))
    run_timed(
        results,
        sec,
        "DiT sampling step (svg)",
        1,
        lambda: dit_sample_step(cfg, 1, guided=False, model=model),
        repeats,
        "1 forward",
    )
    run_timed(
        results,
        sec,
        "DiT sampling step, guided",
        1,
        lambda: dit_sample_step(cfg, 1, guided=True, model=model),
        repeats,
        "cond + null forward",
    )


def paper_decoder_section(results: list[Result], repeats: int) -> None:
    """One UNet forward of the paper's signal decoder on one video-frame latent."""
    cfg = load_config("paper_landscape")
    sec = "paper decoder"
    name = "signal decoder UNet forward"
    start = time.perf_counter()
    model = MultiModalAutoencoder(autoencoder_config(cfg)).eval()
    build_s = time.perf_counter() - start
    dec, r = model.decoder, cfg.vae_latent_size
    with torch.no_grad():  # the condition of one frame (index 5 of 16) of one video
        labels = torch.zeros(1, dtype=torch.long) if dec.class_embed is not None else None
        cond = dec.condition(
            "video",
            torch.randn(1, *cfg.video_latent_shape),
            torch.randn(1, *cfg.semantic_shape),
            labels,
            torch.ones(1),
            frame_index=torch.full((1,), 5 / cfg.data.num_frames),
        )
    x, t = torch.randn(1, cfg.vae.latent_channels, r, r), torch.full((1,), 500)

    @torch.no_grad()
    def step() -> None:
        dec.predict("video", x, t, cond)

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    params = count_params(dec.unets)
    if first > DECODER_LIMIT_S:
        note = f"skipped: warm-up took {first:.0f} s > {DECODER_LIMIT_S:.0f} s"
        results.append(Result(sec, name, 1, None, note, params))
        print(f"  {name}: {note}", flush=True)
        return
    timing = time_cpu(step, repeats, warmup=0)
    timing.warmup = 1
    note = f"1 of the 17 x 2 passes of a guided step; build {build_s:.0f} s"
    results.append(Result(sec, name, 1, timing, note, params))
    print(f"  {name} (batch 1): median {timing.median:,.2f} s", flush=True)


def demo_section(results: list[Result], repeats: int) -> None:
    for kind in ("griffin-lim", "hifigan"):
        demo_vocoder(results, kind, repeats)
        gc.collect()


def demo_vocoder(results: list[Result], kind: str, repeats: int) -> None:
    """The demo pipeline with one vocoder: generate(), and (Griffin-Lim run) its parts."""
    sec = "demo pipeline"
    cfg = load_config("demo")
    try:
        pipe, voc_note = random_pipeline(cfg, kind)
    except ValueError as err:  # the data's mel settings do not fit the vocoder
        results.append(Result(sec, f"generate('svg'), {kind}", 1, None, f"skipped: {err}"))
        return
    sc, data = cfg.sample, cfg.data
    codec = pipe.codec
    voc = codec.get_vocoder()
    voc_params = count_params(voc.generator) if voc.generator else None
    all_params = count_params(pipe.dit, codec.autoencoder, codec.vae) + (voc_params or 0)
    steps = f"{sc.steps} {sc.sampler.upper()} + {sc.decoder_steps} decoder steps"

    def generate() -> None:
        pipe("svg", 1, seed=0)

    run_timed(
        results,
        sec,
        f"generate('svg'), {kind}",
        1,
        lambda: (generate, all_params),
        repeats,
        f"{steps}; {voc_note}",
    )
    if kind == "griffin-lim":  # the parts, with the first vocoder only
        latents: list[torch.Tensor] = []

        def sample() -> None:
            latents[:] = pipe.sample_latents(1, generator=torch.Generator().manual_seed(0))

        def decode() -> None:
            pipe.decode(*latents)

        run_timed(
            results,
            sec,
            "  DiT sampling (sample_latents)",
            1,
            lambda: (sample, count_params(pipe.dit)),
            repeats,
            f"{sc.steps} {sc.sampler.upper()} steps",
        )
        run_timed(
            results,
            sec,
            "  decode (decoder + VAE + vocoder)",
            1,
            lambda: (decode, count_params(codec.autoencoder, codec.vae)),
            repeats,
            f"{sc.decoder_steps} decoder steps, guided",
        )
        pipe.codec = codec.with_decoding("few_step", 4, 1.0, 1.0)
        run_timed(
            results,
            sec,
            "  decode, distilled few-step decoder",
            1,
            lambda: (decode, count_params(codec.autoencoder, codec.vae)),
            repeats,
            "4 unguided decoder passes (mmldm distill-decoder)",
        )
        pipe.codec = codec
    settings = data.mel
    frames = settings.num_frames(int(round(data.clip_seconds * data.sample_rate)))
    mel = torch.randn(1, data.n_mels, frames)

    def vocode() -> None:
        voc(mel)

    run_timed(
        results,
        sec,
        f"  vocoder alone ({kind})",
        1,
        lambda: (vocode, voc_params),
        repeats,
        f"{frames} mel frames = {data.clip_seconds:g} s at {data.sample_rate} Hz",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default=str(RESULTS_DIR / "cpu_timings.json"),
        help="JSON report (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per item (median)")
    parser.add_argument("--quick", action="store_true", help="2 runs per item, 1 of the big ones")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["tiny", "dit-s", "decoder", "demo"],
        choices=["tiny", "dit-s", "decoder", "demo"],
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    big = 1 if args.quick else min(3, repeats)  # paper decoder and demo pipeline: seconds each
    torch.manual_seed(0)
    print(
        f"{cpu_model()}; torch {torch.__version__}, "
        f"torch.get_num_threads() = {torch.get_num_threads()}, "
        f"os.cpu_count() = {os.cpu_count()}, load average {load_average()}",
        flush=True,
    )
    results: list[Result] = []
    loads: dict[str, Any] = {}
    sections = {
        "tiny": (tiny_section, repeats),
        "dit-s": (dit_s_section, repeats),
        "decoder": (paper_decoder_section, big),
        "demo": (demo_section, big),
    }
    total = time.perf_counter()
    for key in args.sections:
        fn, n = sections[key]
        print(f"[{key}]", flush=True)
        before, start = load_average(), time.perf_counter()
        fn(results, n)
        loads[key] = {
            "load_before": before,
            "load_after": load_average(),
            "seconds": round(time.perf_counter() - start, 1),
        }
    total = time.perf_counter() - total
    print(
        format_table(
            ["section", "what", "batch", "params", "median (ms)", "min (ms)", "runs", "note"],
            [r.row() for r in results],
            title=f"CPU timings (torch.get_num_threads() = {torch.get_num_threads()}; "
            "warm-up 1 run; random weights)",
        )
    )
    path = write_json(
        args.out,
        {
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "quick": args.quick,
            "sections": loads,
            "total_seconds": round(total, 1),
            "results": [r.to_dict() for r in results],
        },
    )
    print(f"\nwrote {path} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
