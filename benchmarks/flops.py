"""FLOPs and parameters of MM-LDM per component and per generated sounding video.

For the paper config (``paper_landscape``: 16 frames of 256^2, 1.6 s of 22.05 kHz audio), every
component is built under ``torch.device("meta")`` (no memory, no compute) and one call is counted
with ``torch.utils.flop_counter.FlopCounterMode``. If a component fails on meta tensors, it is
built again on the CPU with real tensors at batch 1 and the "method" column says so.

Components and how often one generated sounding video (task svg, batch 1) calls them:

- KL-VAE encoder: 0 calls at generation (it encodes real clips: latent caching, a2v / v2a).
  Reported for all 16 frames + the audio image, and for what the autoencoder needs
  (the 4 key frames + the audio image; training also encodes the 2 target frames).
- video / audio encoders: 0 calls at generation (latent caching and autoencoder training).
- projectors + classification head: once (decoding derives s_a, s_v and the class from z).
- signal decoder conditioning branches (z -> residuals, content, context): twice
  (conditional and null condition for classifier-free guidance).
- signal decoder UNet, one pass on all 16 frames + the audio image as one batch of 17:
  2 passes per step (classifier-free guidance 2.5 / 2.5 of the paper), 50 DDIM steps.
- DiT, one pass at batch 1: once per step for svg (the DiT runs a second, null pass only for
  the guided conditional tasks a2v / v2a), 50 DDIM steps.
- KL-VAE decoder on 16 frames + the audio image, HiFi-GAN V1 on the 1.6 s mel: once each.

Counting convention: torch's counter reports FLOPs = 2 x multiply-adds (MACs) of matmuls,
convolutions and attention, and nothing for element-wise ops and normalisations.

    .venv/bin/python benchmarks/flops.py [--out benchmarks/results/flops.json]
"""

from __future__ import annotations

import argparse
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from common import (
    CPU,
    META,
    RESULTS_DIR,
    FlopCount,
    count_flops,
    count_params,
    fmt,
    fmt_params,
    format_table,
    to_device,
    write_json,
)

from mmldm.audio.hifigan import HiFiGANConfig, HiFiGANGenerator
from mmldm.codec import autoencoder_config, build_vae, tiny_vae_decoder_config
from mmldm.config import DIT_SIZES, Config, load_config
from mmldm.models.autoencoder import MultiModalAutoencoder
from mmldm.models.dit import DiTInputs, MultiModalDiT
from mmldm.models.vae import TinyVAEDecoder
from mmldm.models.vae import decode as vae_decode
from mmldm.models.vae import encode as vae_encode
from mmldm.networks import dit_config

log = logging.getLogger("flops")

# Paper Table 4 (parameters, "GFLOPs" per DiT forward) and sec. 4.1 / docs/design.md §5.
PAPER_TABLE4 = {"S": (131e6, 34.0), "B": (384e6, 101.0), "L": (1543e6, 407.0)}
# The published configs prepend 77 learnable context tokens (docs/design.md §5); we compare with and
# without them because the paper's FLOPs fall between the two token counts.
PUBLISHED_CONTEXT_TOKENS = 77
# Whole-pipeline settings: every DiT solver x every signal decoder setting.
DIT_SOLVERS = [("DDIM", 50), ("DPM-Solver++", 20)]
# (decoder setting, decoder steps, guided, tiny VAE decoder): the paper's decoder takes 50
# guided DDIM steps (the demo preset 20); a distilled one (mmldm distill-decoder) K unguided
# passes, optionally with the tiny VAE decoder of mmldm distill-vae instead of the KL-VAE's.
DECODERS = [
    ("guided (paper)", 50, True, False),
    ("guided", 20, True, False),
    ("distilled few-step", 4, False, False),
    ("distilled few-step", 2, False, False),
    ("distilled few-step", 1, False, False),
    ("distilled few-step", 4, False, True),
    ("distilled few-step", 1, False, True),
]


@dataclass
class Row:
    """One component: parameters, FLOPs of one call, calls per generated video."""

    key: str
    component: str
    params: int
    flops: FlopCount
    calls: str  # "steps", "passes*steps", "passes" (2 with guidance, else 1) or a number
    method: str
    note: str = ""

    def calls_for(self, steps: int, guided: bool = True) -> int:
        passes = 2 if guided else 1
        if self.calls == "steps":
            return steps
        if self.calls == "passes*steps":
            return passes * steps
        if self.calls == "passes":
            return passes
        return int(self.calls)


# --------------------------------------------------------------------------------------------
# Measuring one component on meta, falling back to real CPU tensors at batch 1
# --------------------------------------------------------------------------------------------

Builder = Callable[[torch.device], tuple[int, Callable[[], Any]]]


def measure(name: str, build: Builder) -> tuple[int, FlopCount, str]:
    """(params, FLOPs of one call, method). ``build(device)`` makes the modules and inputs
    under ``with torch.device(device)`` and returns (params, the call to count)."""
    errors = []
    for device in (META, CPU):
        try:
            with torch.device(device), torch.no_grad():
                params, call = build(device)
                flops = count_flops(call)
        except Exception as err:  # an op without a meta kernel, typically
            errors.append(f"{device}: {type(err).__name__}: {err}")
            log.debug("%s on %s failed:\n%s", name, device, traceback.format_exc())
            continue
        if device == META:
            return params, flops, "meta"
        return params, flops, f"cpu, batch 1 (meta failed: {errors[0][:120]})"
    raise RuntimeError(f"{name}: could not count FLOPs: {'; '.join(errors)}")


def dit_builder(cfg: Config, batch: int = 1) -> Builder:
    """One DiT forward as the svg sampler calls it (zero conditions, no labels)."""

    def build(device: torch.device):
        dit = to_device(MultiModalDiT(dit_config(cfg)), device).eval()
        z_a = torch.randn(batch, *cfg.audio_latent_shape)
        z_v = torch.randn(batch, *cfg.video_latent_shape)
        inp = DiTInputs(
            z_a,
            z_v,
            torch.full((batch,), 500, dtype=torch.long),
            cond_a=torch.zeros_like(z_a),  # sample_latents passes zeros, so cond runs too
            cond_v=torch.zeros_like(z_v),
        )
        return count_params(dit), lambda: dit(inp)

    return build


def dit_train_flops(cfg: Config) -> FlopCount:
    """Forward + backward of the DiT at batch 1 (what one training clip costs), on meta."""
    with torch.device(META):
        dit = to_device(MultiModalDiT(dit_config(cfg)), META)
        z_a = torch.randn(1, *cfg.audio_latent_shape)
        z_v = torch.randn(1, *cfg.video_latent_shape)
        inp = DiTInputs(z_a, z_v, torch.full((1,), 500, dtype=torch.long), z_a * 0, z_v * 0)

        def step() -> None:
            eps_a, eps_v = dit(inp)
            (eps_a.square().mean() + eps_v.square().mean()).backward()

        return count_flops(step)


def autoencoder_rows(cfg: Config) -> list[Row]:
    """Every component of the autoencoder stage, the VAE and the vocoder."""
    ae_cfg = cfg.autoencoder
    f, s, r = cfg.data.num_frames, cfg.data.resolution, cfg.vae_latent_size
    k = len(ae_cfg.key_frames)
    c_vae = cfg.vae.latent_channels
    settings = cfg.data.mel
    mel_frames = settings.num_frames(int(round(cfg.data.clip_seconds * cfg.data.sample_rate)))
    rows: list[Row] = []

    def add(key, component, build, calls, note=""):
        params, flops, method = measure(component, build)
        rows.append(Row(key, component, params, flops, str(calls), method, note))

    def vae_enc(n: int) -> Builder:
        def build(device):
            vae = to_device(build_vae(cfg.vae), device).eval()
            images = torch.randn(n, 3, s, s)
            return count_params(vae.encoder, vae.quant_conv), lambda: vae_encode(vae, images)

        return build

    add(
        "vae_encode_all",
        f"VAE encoder: {f} frames + audio image ({f + 1} x {s}^2)",
        vae_enc(f + 1),
        0,
        "encoding real clips only (a2v / v2a)",
    )
    add(
        "vae_encode_key",
        f"VAE encoder: {k} key frames + audio image ({k + 1} x {s}^2)",
        vae_enc(k + 1),
        0,
        f"latent caching; training encodes {k + 2 + 1} (+2 target frames)",
    )

    def ae_part(make_call) -> Builder:
        def build(device):
            model = to_device(MultiModalAutoencoder(autoencoder_config(cfg)), device).eval()
            return make_call(model)

        return build

    key_latents = (1, k, c_vae, r, r)
    add(
        "video_encoder",
        f"video encoder ({k} key-frame latents -> z_v)",
        ae_part(lambda m: (count_params(m.video_encoder), _call(m.video_encoder, (key_latents,)))),
        0,
        "latent caching / autoencoder training",
    )
    add(
        "audio_encoder",
        "audio encoder (audio-image latent -> z_a)",
        ae_part(
            lambda m: (count_params(m.audio_encoder), _call(m.audio_encoder, ((1, c_vae, r, r),)))
        ),
        0,
        "latent caching / autoencoder training",
    )

    def semantics(m: MultiModalAutoencoder):
        z_a = torch.randn(1, *cfg.audio_latent_shape)
        z_v = torch.randn(1, *cfg.video_latent_shape)

        def call():
            s_a, s_v = m.semantics(z_a, z_v)
            return m.predict_class(s_a, s_v)

        return count_params(m.audio_projector, m.video_projector, m.classifier), call

    add(
        "projectors",
        "projectors + classification head (z -> s, class)",
        ae_part(semantics),
        1,
        "decoding: s_a, s_v and the predicted class",
    )

    def conditions(m: MultiModalAutoencoder):
        dec = m.decoder
        z_a = torch.randn(1, *cfg.audio_latent_shape)
        z_v = torch.randn(f, *cfg.video_latent_shape)
        sem = torch.randn(f, *cfg.semantic_shape)
        labels = torch.zeros(f, dtype=torch.long) if dec.class_embed is not None else None
        index = torch.arange(f).float() / f

        def call():
            dec.condition("audio", z_a, sem[:1], first(labels), torch.ones(1))
            dec.condition("video", z_v, sem, labels, torch.ones(f), frame_index=index)

        return count_params(dec.branches, dec.class_embed), call

    add(
        "decoder_conditions",
        f"signal decoder conditions (1 audio + {f} frames)",
        ae_part(conditions),
        "passes",
        "conditional + null condition (guided), once per video",
    )

    def unet_pass(m: MultiModalAutoencoder):
        dec = m.decoder
        z_a = torch.randn(1, *cfg.audio_latent_shape)
        z_v = torch.randn(f, *cfg.video_latent_shape)
        sem = torch.randn(f, *cfg.semantic_shape)
        labels = torch.zeros(f, dtype=torch.long) if dec.class_embed is not None else None
        index = torch.arange(f).float() / f
        cond_a = dec.condition("audio", z_a, sem[:1], first(labels), torch.ones(1))
        cond_v = dec.condition("video", z_v, sem, labels, torch.ones(f), frame_index=index)
        x_a, x_v = torch.randn(1, c_vae, r, r), torch.randn(f, c_vae, r, r)
        t_a, t_v = torch.full((1,), 500), torch.full((f,), 500)

        def call():
            return dec.predict_both(x_a, t_a, cond_a, x_v, t_v, cond_v)

        return count_params(dec.unets), call

    add(
        "decoder_unet",
        f"signal decoder UNet, 1 pass on {f + 1} latents 4x{r}x{r}",
        ae_part(unet_pass),
        "passes*steps",
        "2 passes per step with classifier-free guidance, 1 without (distilled)",
    )

    def vae_dec(device):
        vae = to_device(build_vae(cfg.vae), device).eval()
        latents = torch.randn(f + 1, c_vae, r, r)
        return count_params(vae.decoder, vae.post_quant_conv), lambda: vae_decode(vae, latents)

    add("vae_decode", f"VAE decoder: {f} frames + audio image", vae_dec, 1)

    def tiny_dec(device):
        tiny = to_device(TinyVAEDecoder(**tiny_vae_decoder_config(cfg)), device).eval()
        latents = torch.randn(f + 1, c_vae, r, r)
        return count_params(tiny), lambda: tiny(latents)

    add(
        "vae_decode_tiny",
        f"tiny VAE decoder (distill-vae): {f} frames + audio image",
        tiny_dec,
        0,
        "replaces the VAE decoder when given (--vae-decoder)",
    )

    def vocoder(device):
        hcfg = HiFiGANConfig.preset("V1")
        gen = to_device(HiFiGANGenerator(hcfg), device).eval()
        mel = torch.randn(1, hcfg.num_mels, mel_frames)
        return count_params(gen), lambda: gen(mel)

    add(
        "vocoder",
        f"HiFi-GAN V1 ({mel_frames} mel frames = {cfg.data.clip_seconds:g} s)",
        vocoder,
        1,
        f"at {cfg.data.sample_rate} Hz",
    )
    return rows


def first(labels: torch.Tensor | None) -> torch.Tensor | None:
    """The audio target's label (one clip) from the per-frame labels."""
    return None if labels is None else labels[:1]


def _call(module: torch.nn.Module, shapes: tuple[tuple[int, ...], ...]) -> Callable[[], Any]:
    inputs = [torch.randn(*shape) for shape in shapes]
    return lambda: module(*inputs)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper_landscape", help="preset or YAML file")
    parser.add_argument(
        "--out", default=str(RESULTS_DIR / "flops.json"), help="JSON report (default: %(default)s)"
    )
    parser.add_argument(
        "--pipeline-size",
        default="XL",
        choices=list(DIT_SIZES),
        help="DiT size of the per-video table (published configs: XL)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log meta failures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    base = load_config(args.config)
    rows = autoencoder_rows(base)

    # DiT per sampling step, each size, and its cost per training clip (forward + backward).
    dit_rows: dict[str, Row] = {}
    dit_table, dit_json = [], {}
    for size in DIT_SIZES:
        cfg = load_config(args.config, [f"dit.size={size}"])
        params, flops, method = measure(f"DiT-{size}", dit_builder(cfg))
        ctx_cfg = load_config(
            args.config, [f"dit.size={size}", f"dit.num_context_tokens={PUBLISHED_CONTEXT_TOKENS}"]
        )
        _, ctx_flops, _ = measure(f"DiT-{size} + context", dit_builder(ctx_cfg))
        train = dit_train_flops(cfg)
        tokens = 2 + cfg.audio_latent_shape[1] ** 2 + cfg.video_latent_shape[1] ** 2
        dit_rows[size] = Row(
            f"dit_{size}",
            f"DiT-{size} ({cfg.dit.hidden_size}x{cfg.dit.depth}, {tokens} tokens), 1 pass",
            params,
            flops,
            "steps",
            method,
            "svg: 1 pass per step (a2v / v2a guided: 2)",
        )
        paper_params, paper_gflops = PAPER_TABLE4.get(size, (None, None))
        dit_table.append(
            [
                f"DiT-{size}",
                fmt_params(params),
                "-" if paper_params is None else fmt_params(int(paper_params)),
                fmt(flops.gflops),
                fmt(flops.gmacs),
                fmt(ctx_flops.gmacs),
                fmt(paper_gflops),
                "-" if paper_gflops is None else f"{paper_gflops / flops.gmacs:.2f}x",
                fmt(train.gflops),
            ]
        )
        dit_json[size] = {
            "params": params,
            "tokens": tokens,
            "flops_per_forward": flops.total,
            "macs_per_forward": flops.total // 2,
            "flops_per_forward_with_77_context_tokens": ctx_flops.total,
            "train_flops_per_clip_fwd_bwd": train.total,
            "paper_params": paper_params,
            "paper_gflops": paper_gflops,
            "method": method,
            "by_op": flops.by_op,
        }

    # Component table at the chosen DiT size and the paper's sampler (50 + 50 DDIM).
    steps = base.sample.steps
    table_rows = [*rows, dit_rows[args.pipeline_size]]
    component_table = []
    for row in table_rows:
        calls = row.calls_for(steps)
        component_table.append(
            [
                row.component,
                fmt_params(row.params),
                fmt(row.flops.gflops),
                calls,
                fmt(row.flops.gflops * calls),
                row.method,
                row.note,
            ]
        )
    per_video = sum(r.flops.total * r.calls_for(steps) for r in table_rows)
    component_table.append(["total per generated video", "", "", "", fmt(per_video / 1e9), "", ""])

    # Whole pipeline per video: every DiT size x every setting of PIPELINES.
    pipeline_table, pipeline_json = [], []
    by_key = {r.key: r for r in rows}
    settings = [(*solver, *decoder) for solver in DIT_SOLVERS for decoder in DECODERS]
    for size, dit_row in dit_rows.items():
        for dit_solver, dit_steps, decoder, dec_steps, guided, tiny in settings:
            dit_total = dit_row.flops.total * dit_steps
            dec_total = by_key["decoder_unet"].flops.total * by_key["decoder_unet"].calls_for(
                dec_steps, guided
            )
            vae_row = by_key["vae_decode_tiny" if tiny else "vae_decode"]
            rest = vae_row.flops.total + sum(
                r.flops.total * r.calls_for(dec_steps, guided)
                for r in rows
                if r.key not in ("decoder_unet", "vae_decode", "vae_decode_tiny")
            )
            total = dit_total + dec_total + rest
            pipeline_table.append(
                [
                    f"DiT-{size}",
                    f"{dit_solver} {dit_steps}",
                    f"{decoder} {dec_steps}" + (", tiny VAE decoder" if tiny else ""),
                    fmt(dit_total / 1e12, 2),
                    fmt(dec_total / 1e12, 2),
                    fmt(rest / 1e12, 2),
                    fmt(total / 1e12, 2),
                    f"{100 * dit_total / total:.1f}%",
                ]
            )
            pipeline_json.append(
                {
                    "dit_size": size,
                    "solver": f"{dit_solver} {dit_steps} + {decoder} {dec_steps}",
                    "dit_steps": dit_steps,
                    "decoder": decoder,
                    "decoder_steps": dec_steps,
                    "decoder_guided": guided,
                    "tiny_vae_decoder": tiny,
                    "dit_flops": dit_total,
                    "decoder_unet_flops": dec_total,
                    "other_flops": rest,
                    "total_flops": total,
                }
            )

    print(
        f"MM-LDM FLOPs, config {base.name}: {base.data.num_frames} frames of "
        f"{base.data.resolution}^2, {base.data.clip_seconds:g} s audio at "
        f"{base.data.sample_rate} Hz; torch FlopCounterMode, FLOPs = 2 x MACs"
    )
    print(
        format_table(
            [
                "component",
                "params",
                "GFLOPs / call",
                "calls / video",
                "GFLOPs / video",
                "method",
                "note",
            ],
            component_table,
            title=f"Per component (DiT-{args.pipeline_size}, {steps} DDIM steps + "
            f"{base.sample.decoder_steps} decoder steps, svg, batch 1)",
        )
    )
    print(
        format_table(
            [
                "DiT",
                "params",
                "paper params",
                "GFLOPs (ours)",
                "GMACs (ours)",
                f"GMACs +{PUBLISHED_CONTEXT_TOKENS} ctx",
                "paper 'GFLOPs'",
                "paper / our GMACs",
                "train GFLOPs / clip",
            ],
            dit_table,
            title="DiT per forward (batch 1) vs paper Table 4",
        )
    )
    print(
        format_table(
            [
                "DiT",
                "DiT solver",
                "signal decoder",
                "DiT TFLOPs",
                "decoder UNet TFLOPs",
                "other TFLOPs",
                "total TFLOPs",
                "DiT share",
            ],
            pipeline_table,
            title="Whole pipeline per generated sounding video (svg, batch 1)",
        )
    )
    path = write_json(
        args.out,
        {
            "config": base.name,
            "convention": "FLOPs = 2 x MACs (torch.utils.flop_counter); element-wise ops and "
            "normalisations are not counted",
            "components": [
                {
                    "key": r.key,
                    "component": r.component,
                    "params": r.params,
                    "flops_per_call": r.flops.total,
                    "calls_per_video_ddim50": r.calls_for(steps),
                    "calls_per_video_dpm20": r.calls_for(20),
                    "method": r.method,
                    "note": r.note,
                    "by_op": r.flops.by_op,
                }
                for r in rows
            ],
            "dit": dit_json,
            "pipeline": pipeline_json,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
