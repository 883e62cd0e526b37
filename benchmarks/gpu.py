"""GPU benchmarks of MM-LDM at the paper config (bf16 autocast, SDPA, optional torch.compile).

Sections (``--sections``; all by default), every model randomly initialised:

- ``dit-train``: DiT training throughput for each size (S / B / L / XL) at each ``--dit-batch``:
  the generator loss, backward, gradient clipping, AdamW and the EMA update, as
  ``train_generator`` runs them on cached latents. Reports clips/s and the model FLOP
  utilisation (MFU): FLOPs of one step counted by ``torch.utils.flop_counter`` (fwd + bwd,
  FLOPs = 2 x MACs) / step time / ``--peak-tflops``.
- ``ae-train``: autoencoder training throughput (``autoencoder_loss`` of the paper config, a
  random VAE of Stable Diffusion's architecture, adversarial loss on, discriminator step), as
  ``train_autoencoder`` runs it: VAE encoding of key / target frames and the audio image
  outside autocast (as the loop does), the loss under autocast.
- ``sampling``: time per generated sounding video (task svg) of the whole pipeline: DiT
  sampling, guided signal decoding, VAE decoding, a random HiFi-GAN V1; with 50 + 50 DDIM
  steps (the paper) and 20 + 20 DPM-Solver++ steps; with the DiT / decoding split.
- ``max-batch``: the largest batch that fits, by doubling then bisection with
  out-of-memory errors caught (``torch.cuda.empty_cache()`` between probes), for a DiT training
  step (each size) and for sampling (videos per ``generate`` call; one step of each sampler
  holds the same memory as fifty). Eager mode: compiled graphs would recompile per batch.

Timing: CUDA events around each run, synchronised, after warm-up runs; medians are reported.
Each section is written to the JSON as soon as it ends, and a section that fails records its
error and the run goes on.

    .venv/bin/python benchmarks/gpu.py [--compile] [--sections ...] [--out ...]

Without CUDA it stops with a message; ``--allow-cpu`` (for instance with ``--config tiny``) runs
the same code paths on the CPU as a smoke test, whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from common import (
    RESULTS_DIR,
    Timing,
    count_flops,
    count_params,
    fmt,
    format_table,
    machine_info,
    random_pipeline,
    time_cpu,
    time_cuda,
    write_json,
)

from mmldm.codec import autoencoder_config, build_vae, vae_inputs
from mmldm.config import DIT_SIZES, Config, load_config
from mmldm.diffusion.schedule import alphas_cumprod
from mmldm.models.autoencoder import MultiModalAutoencoder
from mmldm.models.discriminator import TripletDiscriminator
from mmldm.models.dit import MultiModalDiT
from mmldm.networks import discriminator_config, dit_config
from mmldm.train.autoencoder import Objective, autoencoder_step
from mmldm.train.generator import generator_step

# (DiT sampler, DiT steps, decoder sampler, decoder steps); few_step: a distilled decoder's
# sampler (K unguided passes; random weights here, the cost is what is measured)
SOLVERS = {
    "DDIM 50 + 50": ("ddim", 50, "ddim", 50),
    "DPM-Solver++ 20 + 20": ("dpm", 20, "dpm", 20),
    "DPM-Solver++ 20 + few-step 4": ("dpm", 20, "few_step", 4),
}
SECTIONS = ("dit-train", "ae-train", "sampling", "max-batch")


class Bench:
    """Device, precision and timing settings shared by the sections."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cuda = torch.cuda.is_available() and not args.force_cpu
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.bf16 = not args.no_bf16
        # the trainers' steps take their precision from accelerate, as in training
        self.accelerator = Accelerator(
            cpu=not self.cuda, mixed_precision="bf16" if self.bf16 else "no"
        )
        if self.cuda and args.tf32:  # fp32 parts (the VAE encoding, optimizer) on tensor cores
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes per measurement

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any], repeats: int, warmup: int) -> Timing:
        if self.cuda:
            return time_cuda(fn, repeats, warmup)
        return time_cpu(fn, repeats, warmup)

    def reset_memory(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def compile(self, module: torch.nn.Module) -> torch.nn.Module:
        """``torch.compile`` when ``--compile`` is given (the module itself otherwise)."""
        if not self.args.compile:
            return module
        return torch.compile(module, mode=self.args.compile_mode)


def is_oom(err: BaseException) -> bool:
    """Out of memory, also as the cuBLAS / cuDNN allocation failures some kernels raise."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "ALLOC_FAILED" in text or "CUBLAS_STATUS_NOT_INITIALIZED" in text
    )


@contextlib.contextmanager
def section(report: dict[str, Any], name: str, bench: Bench) -> Iterator[dict[str, Any]]:
    """Collect one section's results; on failure record the error and go on."""
    out: dict[str, Any] = {"rows": []}
    report["sections"][name] = out
    start = time.perf_counter()
    print(f"\n[{name}]", flush=True)
    try:
        yield out
    except Exception as err:  # one failing section must not lose the others' numbers
        out["error"] = f"{type(err).__name__}: {err}"
        out["traceback"] = traceback.format_exc()
        print(f"  FAILED: {out['error']}", file=sys.stderr, flush=True)
    finally:
        out["seconds"] = round(time.perf_counter() - start, 1)
        bench.reset_memory()
        write_json(bench.args.out, report)


# --------------------------------------------------------------------------------------------
# DiT training
# --------------------------------------------------------------------------------------------


class DiTTrainer:
    """One DiT training step as ``train_generator`` runs it, on random normalised latents."""

    def __init__(self, cfg: Config, bench: Bench, compiled: bool) -> None:
        self.cfg, self.bench = cfg, bench
        stage = cfg.train.generator
        dev = bench.device
        with torch.device(dev):  # initialising on the GPU is much faster than on the CPU
            self.model = MultiModalDiT(dit_config(cfg)).to(dev).train()
        self.forward = bench.compile(self.model) if compiled else self.model
        self.ema = (
            copy.deepcopy(self.model).requires_grad_(False)
            if stage.ema_decay > 0 and not bench.args.no_ema
            else None
        )
        kwargs = {"fused": True} if bench.args.fused_adam and bench.cuda else {}
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=stage.lr,
            betas=tuple(stage.betas),
            weight_decay=stage.weight_decay,
            **kwargs,
        )
        self.abar = alphas_cumprod(cfg.diffusion).to(dev)

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        dev, cfg = self.bench.device, self.cfg
        return {
            "z_a": torch.randn(b, *cfg.audio_latent_shape, device=dev),
            "z_v": torch.randn(b, *cfg.video_latent_shape, device=dev),
            "label": torch.randint(0, max(1, cfg.data.num_classes), (b,), device=dev),
        }

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        """The trainer's own step (:func:`generator_step`), with this benchmark's precision."""
        try:
            accelerator, cfg = self.bench.accelerator, self.cfg
            generator_step(accelerator, self.forward, self.opt, batch, cfg, self.abar, 0, self.ema)
        finally:  # also after an OOM, so that a failed probe leaves no gradients behind
            self.opt.zero_grad(set_to_none=True)


def dit_train_section(bench: Bench, out: dict[str, Any]) -> None:
    args = bench.args
    for size in args.sizes:
        cfg = load_config(args.config, [f"dit.size={size}"])
        bench.reset_memory()
        trainer = DiTTrainer(cfg, bench, compiled=args.compile)
        for b in args.dit_batch:
            row: dict[str, Any] = {"size": size, "batch": b, "params": count_params(trainer.model)}
            out["rows"].append(row)
            try:
                row.update(time_dit_step(trainer, b))
            except Exception as err:
                if not is_oom(err):
                    raise
                row["error"] = "out of memory"
            bench.reset_memory()
            if "error" in row:
                print(f"  DiT-{size} batch {b}: out of memory", flush=True)
                continue
            print(
                f"  DiT-{size} batch {b}: {row['median_s'] * 1e3:.1f} ms/step, "
                f"{row['clips_per_s']:.1f} clips/s, MFU {100 * row['mfu']:.1f}%",
                flush=True,
            )


def time_dit_step(trainer: DiTTrainer, b: int) -> dict[str, Any]:
    """Count the FLOPs of one eager step (also the first warm-up run), then time the steps."""
    bench, args = trainer.bench, trainer.bench.args
    batch = trainer.batch(b)
    compiled, trainer.forward = trainer.forward, trainer.model
    try:
        flops = count_flops(lambda: trainer.step(batch))
    finally:
        trainer.forward = compiled
    if bench.cuda:
        torch.cuda.reset_peak_memory_stats()
    timing = bench.time(lambda: trainer.step(batch), args.repeats, args.warmup)
    achieved = flops.total / timing.median / 1e12
    return {
        **timing.to_dict(),
        "clips_per_s": b / timing.median,
        "flops_per_step": flops.total,
        "achieved_tflops": achieved,
        "mfu": achieved / args.peak_tflops,
        "peak_memory_gib": bench.peak_gib(),
    }


# --------------------------------------------------------------------------------------------
# Autoencoder training
# --------------------------------------------------------------------------------------------


def ae_train_section(bench: Bench, out: dict[str, Any]) -> None:
    args = bench.args
    overrides = ["train.gradient_checkpointing=true"] if args.grad_ckpt else []
    cfg = load_config(args.config, overrides)
    dev = bench.device
    stage = cfg.train.autoencoder
    with torch.device(dev):
        vae = build_vae(cfg.vae).to(dev).eval().requires_grad_(False)
        model = (
            MultiModalAutoencoder(autoencoder_config(cfg), cfg.train.gradient_checkpointing)
            .to(dev)
            .train()
        )
    unets = model.decoder.unets
    eager_unets = dict(unets.items())
    # the UNet does nearly all of the work; compiled copies share the eager ones' parameters
    compiled_unets = (
        {k: torch.compile(u, mode=args.compile_mode) for k, u in eager_unets.items()}
        if args.compile
        else eager_unets
    )

    def use_unets(which: dict[str, torch.nn.Module]) -> None:
        for k, u in which.items():
            unets[k] = u

    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=stage.lr,
        betas=tuple(stage.betas),
        weight_decay=stage.weight_decay,
    )
    disc = disc_opt = None
    if cfg.autoencoder.gan_weight > 0:
        with torch.device(dev):
            disc = TripletDiscriminator(discriminator_config(cfg)).to(dev).train()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=stage.lr, betas=tuple(stage.betas))
    # the GAN term from the first step on; the objective holds the VAE and discriminator
    cfg = dataclasses.replace(
        cfg, discriminator=dataclasses.replace(cfg.discriminator, start_step=0)
    )
    accelerator = bench.accelerator
    objective = Objective(model, cfg)
    objective.aux.update(vae=vae, discriminator=disc)
    out["params"] = {
        "autoencoder": count_params(model),
        "vae": count_params(vae),
        "discriminator": count_params(disc),
    }
    d = cfg.data
    n_audio = int(round(d.clip_seconds * d.sample_rate))

    for b in args.ae_batch:
        row: dict[str, Any] = {"batch": b, "gan": disc is not None}
        out["rows"].append(row)
        bench.reset_memory()
        video = torch.rand(b, d.num_frames, 3, d.resolution, d.resolution, device=dev) * 2 - 1
        audio = (torch.rand(b, n_audio, device=dev) * 2 - 1) * 0.5
        labels = torch.randint(0, max(1, d.num_classes), (b,), device=dev)

        def encode(video=video, audio=audio, b=b):
            flip = torch.rand(b, device=dev) < d.hflip_prob
            return vae_inputs(vae, cfg, video, audio, cfg.autoencoder.target_frames, flip=flip)

        def step(labels=labels, encode=encode):
            try:  # the trainer's own step, the VAE inputs outside autocast as there
                inputs = encode()
                autoencoder_step(
                    accelerator, objective, opt, inputs, labels, cfg, 0, disc, disc_opt
                )
            finally:
                opt.zero_grad(set_to_none=True)
                if disc is not None:
                    disc_opt.zero_grad(set_to_none=True)

        try:
            use_unets(eager_unets)  # count FLOPs of an eager step (also the first warm-up)
            flops = count_flops(step)
            use_unets(compiled_unets)
            if bench.cuda:
                torch.cuda.reset_peak_memory_stats()
            timing = bench.time(step, args.ae_repeats, args.warmup)
            peak = bench.peak_gib()
            with torch.no_grad():
                enc_timing = bench.time(encode, args.ae_repeats, 1)
        except Exception as err:
            if not is_oom(err):
                raise
            row["error"] = "out of memory"
            print(f"  autoencoder batch {b}: out of memory", flush=True)
            bench.reset_memory()
            continue
        achieved = flops.total / timing.median / 1e12
        row.update(
            timing.to_dict(),
            clips_per_s=b / timing.median,
            vae_encode_median_s=enc_timing.median,
            flops_per_step=flops.total,
            achieved_tflops=achieved,
            mfu=achieved / args.peak_tflops,
            peak_memory_gib=peak,
        )
        print(
            f"  autoencoder batch {b}: {timing.median * 1e3:.0f} ms/step "
            f"(VAE encoding {enc_timing.median * 1e3:.0f} ms), {b / timing.median:.2f} clips/s, "
            f"MFU {100 * achieved / args.peak_tflops:.1f}%",
            flush=True,
        )


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def gpu_pipeline(bench: Bench, cfg: Config):
    """The random pipeline on the device (HiFi-GAN V1 vocoder where the mel settings allow)."""
    try:
        return random_pipeline(cfg, "hifigan", bench.device)
    except ValueError:  # the data's mel settings do not fit HiFi-GAN V1
        return random_pipeline(cfg, "griffin-lim", bench.device)


def sampling_section(bench: Bench, out: dict[str, Any]) -> None:
    args = bench.args
    cfg = load_config(args.config, [f"dit.size={args.sample_size}"])
    pipe, voc_note = gpu_pipeline(bench, cfg)
    if args.compile:
        pipe.dit.compile(mode=args.compile_mode)
        for unet in pipe.codec.autoencoder.decoder.unets.values():
            unet.compile(mode=args.compile_mode)
    out.update(
        dit_size=args.sample_size,
        vocoder=voc_note,
        videos_per_call=args.sample_num,
        params=count_params(
            pipe.dit, pipe.codec.autoencoder, pipe.codec.vae, pipe.codec.get_vocoder().generator
        ),
    )
    codec = pipe.codec
    for solver, (sampler, steps, dec_sampler, dec_steps) in SOLVERS.items():
        # the DiT's sampler is an argument of generate, the decoder's a setting of the codec;
        # the few-step decoder runs without guidance, as a distilled one does
        guidance = 1.0 if dec_sampler == "few_step" else cfg.sample.decoder_guidance_audio
        pipe.codec = codec.with_decoding(dec_sampler, dec_steps, guidance, guidance)
        bench.reset_memory()
        row = time_sampling(bench, pipe, sampler, steps, args.sample_num)
        out["rows"].append(
            {"solver": solver, "dit_steps": steps, "decoder_steps": dec_steps, **row}
        )
        n = args.sample_num
        print(
            f"  {solver}: {row['seconds_per_video']:.2f} s per video "
            f"(DiT {row['dit_sampling_median_s'] / n:.2f} s, "
            f"decoding {row['decoding_median_s'] / n:.2f} s), {n} video(s) per call",
            flush=True,
        )


def time_sampling(bench: Bench, pipe, sampler: str, steps: int, n: int) -> dict[str, Any]:
    """generate("svg") of ``n`` videos, then its two halves: DiT sampling and decoding."""
    args = bench.args
    latents: list[torch.Tensor] = []

    def generate() -> None:
        with bench.autocast():
            pipe("svg", n, seed=0, num_inference_steps=steps, sampler=sampler)

    def sample() -> None:
        with bench.autocast():
            latents[:] = pipe.sample_latents(n, steps=steps, sampler=sampler)

    def decode() -> None:
        with bench.autocast():
            pipe.decode(*latents)

    total = bench.time(generate, args.sample_repeats, args.warmup_sampling)
    peak = bench.peak_gib()
    dit = bench.time(sample, args.sample_repeats, 1)
    dec = bench.time(decode, args.sample_repeats, 0)
    return {
        **total.to_dict(),
        "seconds_per_video": total.median / n,
        "dit_sampling_median_s": dit.median,
        "decoding_median_s": dec.median,
        "peak_memory_gib": peak,
    }


# --------------------------------------------------------------------------------------------
# Largest batch
# --------------------------------------------------------------------------------------------


def largest_batch(fits: Callable[[int], bool], limit: int) -> tuple[int, bool]:
    """(largest b <= limit with fits(b), whether the limit itself fit): doubling from 1, then
    bisection between the last fit and the first failure. Assumes fitting is monotone."""
    lo, hi, b = 0, None, 1
    while b <= limit:
        if fits(b):
            lo, b = b, b * 2
        else:
            hi = b
            break
    if hi is None:  # every doubling fit: try the limit itself
        if lo < limit and fits(limit):
            lo = limit
        return lo, lo == limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, False


def make_probe(bench: Bench, run: Callable[[int], None], log: list[dict]) -> Callable[[int], bool]:
    """``fits(b)``: run one probe, catching out-of-memory (and recording other failures)."""

    def fits(b: int) -> bool:
        ok, reason = True, ""
        start = time.perf_counter()
        try:
            run(b)
            bench.sync()
        except Exception as err:
            if not is_oom(err) and not isinstance(err, RuntimeError):
                raise
            # other RuntimeErrors at large batches: 32-bit indexing limits, grid sizes
            ok, reason = False, "out of memory" if is_oom(err) else f"{type(err).__name__}: {err}"
        # the exception and its frames are gone here: now the memory can be released
        bench.reset_memory()
        log.append(
            {"batch": b, "fits": ok, "reason": reason[:300], "s": time.perf_counter() - start}
        )
        print(f"    batch {b}: {'fits' if ok else reason[:80]}", flush=True)
        return ok

    return fits


def max_batch_section(bench: Bench, out: dict[str, Any]) -> None:
    args = bench.args
    for size in args.max_batch_sizes:
        cfg = load_config(args.config, [f"dit.size={size}"])
        bench.reset_memory()
        trainer = DiTTrainer(cfg, bench, compiled=False)
        trainer.step(trainer.batch(1))  # allocate AdamW state (and EMA) before probing
        probes: list[dict] = []
        print(f"  DiT-{size} training step:", flush=True)
        best, at_limit = largest_batch(
            make_probe(bench, lambda b, t=trainer: t.step(t.batch(b)), probes),
            args.max_batch_limit,
        )
        out["rows"].append(
            {
                "what": f"DiT-{size} training step",
                "max_batch": best,
                "limit_reached": at_limit,
                "probes": probes,
            }
        )
        del trainer
    cfg = load_config(args.config, [f"dit.size={args.sample_size}"])
    bench.reset_memory()
    pipe, voc_note = gpu_pipeline(bench, cfg)
    guidance = cfg.sample.decoder_guidance_audio  # one guided step holds as much as fifty
    pipe.codec = pipe.codec.with_decoding("ddim", 1, guidance, guidance)

    def run(n: int) -> None:
        with bench.autocast():
            pipe("svg", n, seed=0, num_inference_steps=1, sampler="ddim")

    probes = []
    print(f"  sampling (DiT-{args.sample_size}, {voc_note}):", flush=True)
    best, at_limit = largest_batch(make_probe(bench, run, probes), args.max_sample_limit)
    out["rows"].append(
        {
            "what": f"sampling, videos per generate() (DiT-{args.sample_size})",
            "max_batch": best,
            "limit_reached": at_limit,
            "probes": probes,
        }
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def print_tables(report: dict[str, Any]) -> None:
    secs = report["sections"]
    for name in ("dit-train", "ae-train"):  # a row left without timings by a failed section
        for r in secs.get(name, {}).get("rows", []):
            if "median_s" not in r:
                r.setdefault("error", "failed (see the section's error)")
    if "dit-train" in secs:
        rows = [
            [
                f"DiT-{r['size']}",
                f"{r['params'] / 1e6:.0f}M",
                r["batch"],
                r.get("error") or fmt(r["median_s"] * 1e3),
                "-" if "error" in r else fmt(r["clips_per_s"]),
                "-" if "error" in r else fmt(r["achieved_tflops"]),
                "-" if "error" in r else f"{100 * r['mfu']:.1f}%",
                "-" if r.get("peak_memory_gib") is None else fmt(r["peak_memory_gib"]),
            ]
            for r in secs["dit-train"]["rows"]
        ]
        print(
            format_table(
                ["DiT", "params", "batch", "ms / step", "clips / s", "TFLOP/s", "MFU", "peak GiB"],
                rows,
                title="DiT training (loss + backward + clip + AdamW + EMA)",
            )
        )
    if "ae-train" in secs:
        rows = [
            [
                r["batch"],
                r.get("error") or fmt(r["median_s"] * 1e3, 0),
                "-" if "error" in r else fmt(r["vae_encode_median_s"] * 1e3, 0),
                "-" if "error" in r else fmt(r["clips_per_s"], 2),
                "-" if "error" in r else fmt(r["achieved_tflops"]),
                "-" if "error" in r else f"{100 * r['mfu']:.1f}%",
                "-" if r.get("peak_memory_gib") is None else fmt(r["peak_memory_gib"]),
            ]
            for r in secs["ae-train"]["rows"]
        ]
        print(
            format_table(
                [
                    "batch",
                    "ms / step",
                    "VAE enc. ms",
                    "clips / s",
                    "TFLOP/s",
                    "MFU",
                    "peak GiB",
                ],
                rows,
                title="Autoencoder training (GAN on, discriminator step included)",
            )
        )
    if "sampling" in secs:
        s = secs["sampling"]
        rows = [
            [
                r["solver"],
                fmt(r["seconds_per_video"], 2),
                fmt(r["dit_sampling_median_s"] / s["videos_per_call"], 2),
                fmt(r["decoding_median_s"] / s["videos_per_call"], 2),
                "-" if r.get("peak_memory_gib") is None else fmt(r["peak_memory_gib"]),
            ]
            for r in s["rows"]
        ]
        print(
            format_table(
                ["solver", "s / video", "DiT s / video", "decoding s / video", "peak GiB"],
                rows,
                title=f"Sampling svg (DiT-{s.get('dit_size')}, {s.get('vocoder')}, "
                f"{s.get('videos_per_call')} video(s) per call)",
            )
        )
    if "max-batch" in secs:
        rows = [
            [r["what"], f"{r['max_batch']}{'+' if r['limit_reached'] else ''}"]
            for r in secs["max-batch"]["rows"]
        ]
        print(format_table(["what", "largest batch"], rows, title="Largest batch that fits"))
    for name, sec in secs.items():
        if "error" in sec:
            print(f"\nsection {name} failed: {sec['error']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", default="paper_landscape", help="preset or YAML file")
    parser.add_argument("--out", default=str(RESULTS_DIR / "gpu.json"), help="JSON report")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--sizes", nargs="+", default=list(DIT_SIZES), choices=list(DIT_SIZES))
    parser.add_argument(
        "--dit-batch",
        nargs="+",
        type=int,
        default=[2, 28],
        help="DiT training batches (paper Table 2: 2; published per-GPU batch: 28)",
    )
    parser.add_argument(
        "--ae-batch",
        nargs="+",
        type=int,
        default=[2, 20],
        help="autoencoder training batches (published per-GPU batch: 20)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed DiT steps (median)")
    parser.add_argument("--ae-repeats", type=int, default=5, help="timed autoencoder steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--sample-size", default="XL", choices=list(DIT_SIZES))
    parser.add_argument("--sample-num", type=int, default=1, help="videos per generate() call")
    parser.add_argument("--sample-repeats", type=int, default=3)
    parser.add_argument("--warmup-sampling", type=int, default=1)
    parser.add_argument(
        "--max-batch-sizes", nargs="+", default=["S", "XL"], choices=list(DIT_SIZES)
    )
    parser.add_argument("--max-batch-limit", type=int, default=4096, help="DiT search bound")
    parser.add_argument("--max-sample-limit", type=int, default=256, help="sampling bound")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="dense bf16 peak for MFU (H100 / H200 SXM: 989; A100: 312)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT / UNets")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode")
    parser.add_argument("--no-bf16", action="store_true", help="fp32 instead of bf16 autocast")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 matmuls / convs")
    parser.add_argument("--fused-adam", action="store_true", help="AdamW(fused=True) for the DiT")
    parser.add_argument("--no-ema", action="store_true", help="DiT training without EMA update")
    parser.add_argument(
        "--grad-ckpt", action="store_true", help="autoencoder with gradient checkpointing"
    )
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="smoke-test the code paths on the CPU when there is no GPU (numbers meaningless)",
    )
    parser.add_argument("--force-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.force_cpu = args.force_cpu and args.allow_cpu
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            f"benchmarks/gpu.py needs a CUDA GPU, and torch {torch.__version__} sees none on this "
            "machine (torch.cuda.is_available() is False). Run it on an H100 / H200 with a CUDA "
            "build of torch; see benchmarks/README.md. (--allow-cpu runs the same code paths on "
            "the CPU as a smoke test only.)",
            file=sys.stderr,
        )
        return 2
    bench = Bench(args)
    info = machine_info()
    print(
        f"device {info.get('gpu', 'cpu (smoke test)')}, torch {torch.__version__}, bf16 autocast "
        f"{bench.bf16}, compile {args.compile}, peak {args.peak_tflops} TFLOP/s, "
        f"config {args.config}",
        flush=True,
    )
    report: dict[str, Any] = {
        "config": args.config,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "smoke_test_on_cpu": not bench.cuda,
        "sections": {},
    }
    runners = {
        "dit-train": dit_train_section,
        "ae-train": ae_train_section,
        "sampling": sampling_section,
        "max-batch": max_batch_section,
    }
    for name in args.sections:
        with section(report, name, bench) as out:
            runners[name](bench, out)
    print_tables(report)
    print(f"\nwrote {args.out}")
    return 0 if not any("error" in s for s in report["sections"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
