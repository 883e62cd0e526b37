"""Signal decoder settings side by side on a finished demo: quality and CPU time.

For each setting, the demo's scored tasks (reconstructions of the 16 held-out clips, svg, a2v,
v2a) are sampled again with the demo's generator and autoencoder, decoded with that setting, and
scored like the demo (synthetic-benchmark scores, chance beside the timing scores); the round
trip of the held-out clips is also measured as frame PSNR and log-mel L1 distance. Settings:

- the autoencoder's own decoder: DDIM 50 guided (the paper's), DDIM 20 guided (the demo
  preset's), and the few-step sampler without guidance and without any training (K = 4, 1);
- every distilled decoder given with ``--distilled RUN`` (``mmldm distill-decoder``), at its K;
- with ``--vae-decoder RUN`` (``mmldm distill-vae``), each distilled decoder again with that
  tiny VAE decoder in place of the KL-VAE's.

    .venv/bin/python benchmarks/decoders.py --demo runs/demo --distilled runs/dec4 runs/dec1

Outputs go under DEMO/decoders/<setting>/ (samples, metrics.json); the table is printed and
written as JSON (``--out``). Costs per paper-size video are in benchmarks/flops.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, format_table, machine_info, write_json

from mmldm.audio.mel import mel_spectrogram
from mmldm.data.media import read_media
from mmldm.pipeline import MMLDMPipeline
from mmldm.synthetic.demo import NUM_TEST_CLIPS, SCORED_TASKS, evaluate_demo, make_samples

log = logging.getLogger("decoders")

# name: (sampler, steps, guidance) applied to the autoencoder's own decoder
TEACHER_SETTINGS = {
    "ddim50-guided": ("ddim", 50, 2.5),
    "ddim20-guided": ("ddim", 20, 2.5),
    "fewstep4-untrained": ("few_step", 4, 1.0),
    "fewstep1-untrained": ("few_step", 1, 1.0),
}
COLUMNS = [  # (task, metric, header)
    ("reconstruction", "position_within_2px", "recon pos<=2px"),
    ("reconstruction", "video_event_f1", "recon video ev"),
    ("reconstruction", "audio_event_f1", "recon audio ev"),
    ("svg", "av_class_agreement", "svg class"),
    ("svg", "sync_f1", "svg sync"),
    ("a2v", "video_class_accuracy", "a2v class"),
    ("a2v", "sync_f1", "a2v timing (chance)"),
    ("v2a", "audio_class_accuracy", "v2a class"),
    ("v2a", "sync_f1", "v2a timing (chance)"),
]


def round_trip(samples: Path, cfg) -> dict[str, float]:
    """Frame PSNR (dB, frames in [0, 1]) and log-mel L1 of the reconstructions against their
    sources, both read back from their mp4 files."""
    records = json.loads((samples / "reconstruction" / "reconstruction.json").read_text())
    mel = cfg.data.mel
    n = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    psnr, mel_l1 = [], []
    for r in records["samples"]:
        rec = read_media(samples / "reconstruction" / r["file"], sample_rate=cfg.data.sample_rate)
        src = read_media(r["condition"], sample_rate=cfg.data.sample_rate)
        f = cfg.data.num_frames
        a = torch.from_numpy(rec.frames[:f]).float() / 255
        b = torch.from_numpy(src.frames[:f]).float() / 255
        mse = (a - b).square().mean().item()
        psnr.append(10 * math.log10(1 / max(mse, 1e-10)))
        wa = torch.from_numpy(rec.audio[:n]).float()
        wb = torch.from_numpy(src.audio[:n]).float()
        mel_l1.append((mel_spectrogram(wa, mel) - mel_spectrogram(wb, mel)).abs().mean().item())
    return {"frame_psnr": sum(psnr) / len(psnr), "log_mel_l1": sum(mel_l1) / len(mel_l1)}


def run_setting(demo: Path, name: str, pipe: MMLDMPipeline) -> dict:
    folder = demo / "decoders" / name
    data_dir, test_dir = demo / "data" / "train", demo / "data" / "test"
    t0 = time.perf_counter()
    seconds = make_samples(pipe, demo, test_dir, dest=folder / "samples", tasks=SCORED_TASKS)
    cfg = pipe.codec.cfg
    metrics = evaluate_demo(demo, cfg, data_dir, test_dir, samples=folder / "samples")
    metrics["round_trip"] = round_trip(folder / "samples", cfg)
    sc = cfg.sample
    guided = sc.decoder_guidance_audio != 1.0 or sc.decoder_guidance_video != 1.0
    metrics["setting"] = {
        "sampler": sc.decoder_sampler,
        "steps": sc.decoder_steps,
        "guidance": sc.decoder_guidance_video,
        "unet_passes_per_latent": sc.decoder_steps * (2 if guided else 1),
        "reconstruction_seconds_per_clip": seconds["reconstruction"] / NUM_TEST_CLIPS,
        "seconds": time.perf_counter() - t0,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def table_row(name: str, m: dict) -> list[str]:
    row = [name, str(m["setting"]["unet_passes_per_latent"])]
    for task, key, header in COLUMNS:
        value = m[task]["value"][key]
        cell = f"{value:.2f}"
        if "chance" in header:
            cell += f" ({m[task]['shuffled'][key]:.2f})"
        row.append(cell)
    rt = m["round_trip"]
    row += [f"{rt['frame_psnr']:.1f}", f"{rt['log_mel_l1']:.2f}"]
    row.append(f"{m['setting']['reconstruction_seconds_per_clip']:.2f}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", required=True, help="a finished mmldm demo folder")
    parser.add_argument("--distilled", nargs="*", default=[], help="distill-decoder runs")
    parser.add_argument("--vae-decoder", help="a distill-vae run: each distilled decoder with it")
    parser.add_argument(
        "--teacher",
        nargs="*",
        default=list(TEACHER_SETTINGS),
        choices=list(TEACHER_SETTINGS),
        help="settings of the autoencoder's own decoder (default: all)",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "decoders.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.manual_seed(0)
    demo = Path(args.demo)
    load = dict(pretrained=demo / "generator", autoencoder=demo / "autoencoder")
    results = {}
    if args.teacher:
        pipe = MMLDMPipeline.from_pretrained(**load)  # once: each setting only changes the config
        own = pipe.codec
        for name in args.teacher:
            sampler, steps, guidance = TEACHER_SETTINGS[name]
            pipe.codec = own.with_decoding(sampler, steps, guidance, guidance)
            results[name] = run_setting(demo, name, pipe)
    for run in args.distilled:
        for tiny in [None, args.vae_decoder] if args.vae_decoder else [None]:
            pipe = MMLDMPipeline.from_pretrained(**load, decoder=run, vae_decoder=tiny)
            name = f"distilled-{Path(run).name}" + (f"+{Path(tiny).name}" if tiny else "")
            results[name] = run_setting(demo, name, pipe)
    headers = ["decoder", "passes / latent", *(h for _, _, h in COLUMNS)]
    headers += ["recon PSNR dB", "recon log-mel L1", "recon s / clip"]
    print(
        format_table(
            headers,
            [table_row(n, m) for n, m in results.items()],
            title=f"Signal decoder settings on {demo} ({results[next(iter(results))]['family']} "
            "family, 16 held-out clips; chance = another clip's condition)",
        )
    )
    path = write_json(args.out, {"demo": str(demo), "machine": machine_info(), "settings": results})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
