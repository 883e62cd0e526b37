"""`mmldm demo`: the whole of MM-LDM on a laptop CPU, from nothing to a gallery page.

Stages (each skipped when its output is complete, so a re-run continues where it stopped):

    1. data        synthetic sounding videos (train set + a held-out set for the conditions)
    2. vae         a small KL-VAE trained on frames and audio images
    3. autoencoder the multi-modal autoencoder
    4. latents     the training set encoded once
    5. generator   the DiT with the long / continuation branch
    6. samples     every task: svg, a2v, v2a, audio, video, long, audio/video continuation,
                   and the autoencoder's reconstructions of the held-out clips
    7. evaluate    synthetic-benchmark scores, with the real data's (ceiling) and shuffled (chance),
                   class and time (positions, events) alike
    8. gallery     DIR/index.html
"""

from __future__ import annotations

import html
import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mmldm.config import Config, load_config
from mmldm.generation import MMLDMPipelineOutput

log = logging.getLogger(__name__)

NUM_TRAIN_CLIPS = 96  # videos of 2 clips each
NUM_TEST_CLIPS = 16
STAGES = ("data", "vae", "autoencoder", "latents", "generator", "samples", "evaluate", "gallery")


def _done(path: Path) -> bool:
    return (path / ".done").is_file()


def _mark(path: Path, info: dict | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / ".done").write_text(json.dumps(info or {}))


class Stages:
    """Prints where the demo is, how long it has run and an estimate of what is left."""

    # rough shares of the total time on a 2-core CPU, for the estimate
    WEIGHTS = {
        "data": 1,
        "vae": 20,
        "autoencoder": 28,
        "latents": 1,
        "generator": 40,
        "samples": 9,
        "evaluate": 1,
        "gallery": 1,
    }

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.ran = 0.0  # weight of the stages run (not skipped) in this call so far
        self.skipping = False  # whether the current stage was skipped

    def start(self, name: str, skipped: bool = False) -> None:
        i = STAGES.index(name) + 1
        elapsed = time.perf_counter() - self.t0
        left = ""
        if self.ran and not skipped:  # at the pace of the stages run in this call
            to_come = sum(self.WEIGHTS[s] for s in STAGES[i - 1 :])
            left = f", about {elapsed / self.ran * to_come / 60:.1f} min left"
        self.skipping = skipped
        state = "already done, skipped" if skipped else "running"
        log.info("[%d/%d] %s: %s (%.0f s elapsed%s)", i, len(STAGES), name, state, elapsed, left)

    def finish(self, name: str) -> None:
        if not self.skipping:
            self.ran += self.WEIGHTS[name]


class StageFailed(RuntimeError):
    """A command of the demo failed (its error was printed); ``code`` is its exit status."""

    def __init__(self, argv: list[str], code: int) -> None:
        super().__init__(f"stopped: `mmldm {argv[0]}` failed (exit {code}); re-run to continue")
        self.code = code


def stage_commands(
    out: Path, config: str, overrides: list[str], family: str, clip_seconds: float
) -> dict[str, list[list[str]]]:
    """The mmldm commands of the data and training stages, as a user would type them (a
    stage with checkpoints resumes its run)."""
    conf = ["--config", config, *(f"--set={o}" for o in overrides)]
    data, test, cache = out / "data" / "train", out / "data" / "test", out / "cache"

    def synth(folder: Path, num: int, seed: int, *more: str) -> list[str]:
        return ["synth-data", "--out", str(folder), "--num-clips", str(num), "--seed", str(seed),
                "--family", family, *more, *conf]  # fmt: skip

    def train(command: str, run: Path, *more: str) -> list[str]:
        if _resumable(run):  # the run keeps its stored config, data and cache
            return [command, "--resume", str(run)]
        return [command, "--out", str(run), *more, *conf]

    reading = ["--data", str(data), "--cache", str(cache)]
    encode = ["cache-latents", "--autoencoder", str(out / "autoencoder")]
    encode += ["--out", str(out / "latents"), *reading, "--batch-size", "32"]
    return {
        "data": [
            synth(data, NUM_TRAIN_CLIPS, 0),
            synth(test, NUM_TEST_CLIPS, 1000, "--duration", str(clip_seconds)),
        ],
        # a small KL-VAE trained whole (the paper fine-tunes SD's decoder only)
        "vae": [train("train-vae", out / "vae", *reading, "--set=vae.train_decoder_only=false")],
        "autoencoder": [
            train("train-autoencoder", out / "autoencoder", *reading, "--vae", str(out / "vae"))
        ],
        "latents": [encode],
        "generator": [
            train("train-generator", out / "generator", "--latents", str(out / "latents"), "--long")
        ],
    }


def run_demo(
    out: str | Path,
    config: str = "demo",
    overrides: list[str] | None = None,
    family: str = "ball",
    *,
    command: Callable[[list[str]], int],
    load_pipeline: Callable[..., Any],
) -> Path:
    """Run every stage into ``out`` on the synthetic ``family``; returns the gallery page.

    The data and training stages run the mmldm commands of :func:`stage_commands` with
    ``command(argv) -> exit status`` (the CLI's ``main``), each logged as it starts, so the
    demo shows the commands that reproduce it; ``load_pipeline(generator_run,
    autoencoder=autoencoder_run)`` (``MMLDMPipeline.from_pretrained``) loads the trained
    models for the samples stage.
    """
    out = Path(out)
    overrides = list(overrides or [])
    # the autoencoder's config: the data settings and key frames that the scores read
    cfg = load_config(config, [*overrides, f"vae.pretrained={out / 'vae'}"])
    data_dir, test_dir = out / "data" / "train", out / "data" / "test"
    commands = stage_commands(out, config, overrides, family, cfg.data.clip_seconds)

    def samples() -> None:
        pipe = load_pipeline(out / "generator", autoencoder=out / "autoencoder")
        make_samples(pipe, out, test_dir)

    def scores() -> None:
        metrics = evaluate_demo(out, cfg, data_dir, test_dir)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    work = {name: partial(_run_commands, command, argvs) for name, argvs in commands.items()}
    work.update(samples=samples, evaluate=scores)
    stages = Stages()
    for name in STAGES[:-1]:
        done = _done(out / name)
        stages.start(name, done)
        if not done:
            if name == "data":  # a half-written data set is written again
                shutil.rmtree(out / "data", ignore_errors=True)
            work[name]()
            _mark(out / name)
        stages.finish(name)
    stages.start("gallery")
    page = write_gallery(out, json.loads((out / "metrics.json").read_text()))
    stages.finish("gallery")
    log.info("demo finished in %.1f min: open %s", (time.perf_counter() - stages.t0) / 60, page)
    return page


def _run_commands(command: Callable[[list[str]], int], argvs: list[list[str]]) -> None:
    for argv in argvs:
        log.info("$ mmldm %s", shlex.join(argv))
        code = command(argv)
        if code:
            raise StageFailed(argv, code)


def _resumable(run: Path) -> bool:
    return (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step_*"))


def _test_clips(test_dir: Path, cfg: Config) -> list[dict]:
    """The held-out clips: their frames, audio and class (the conditions of a2v / v2a), the
    classes taking turns (so that any first few clips show different classes)."""
    from mmldm.data.dataset import SoundingVideoDataset

    ds = SoundingVideoDataset(test_dir, cfg.data)
    clips = [ds[i] for i in range(len(ds))]
    turn = {}  # clip -> its rank within its class
    for i, clip in enumerate(clips):
        turn[i] = sum(int(c["label"]) == int(clip["label"]) for c in clips[:i])
    return [clips[i] for i in sorted(range(len(clips)), key=lambda i: (turn[i], i))]


SAMPLE_PLAN = {  # task: (number of samples, clips)
    "reconstruction": (NUM_TEST_CLIPS, 1),
    "svg": (16, 1),
    "a2v": (NUM_TEST_CLIPS, 1),
    "v2a": (NUM_TEST_CLIPS, 1),
    "audio": (4, 1),
    "video": (4, 1),
    "long": (4, 3),
    "audio-continuation": (4, 3),
    "video-continuation": (4, 3),
}


SCORED_TASKS = ("reconstruction", "svg", "a2v", "v2a")  # what evaluate_demo scores


@torch.no_grad()
def make_samples(
    pipe,
    out: Path,
    test_dir: Path,
    *,
    dest: Path | None = None,
    tasks: tuple[str, ...] = tuple(SAMPLE_PLAN),
) -> dict[str, float]:
    """Samples of ``tasks`` (and reconstructions) with ``pipe`` (an
    :class:`~mmldm.pipeline.MMLDMPipeline`) into ``dest`` (default ``out/samples``); returns
    seconds per task."""
    dest = dest or out / "samples"
    clips = _test_clips(test_dir, pipe.cfg)
    audio = torch.stack([c["audio"] for c in clips])
    video = torch.stack([c["video"] for c in clips])
    conditions = {
        "reconstruction": {},
        "a2v": {"audio": audio},
        "v2a": {"video": video},
        "audio-continuation": {"audio": audio[:4]},
        "video-continuation": {"video": video[:4]},
    }
    seconds = {}
    for task in tasks:
        num, k = SAMPLE_PLAN[task]
        t0 = time.perf_counter()
        if task == "reconstruction":
            gen = reconstruct(pipe, video, audio)
        else:
            gen = pipe.generate(task, num, seed=0, clips=k, **conditions.get(task, {}))
        records = pipe.save(gen, dest / task)
        if task in conditions:
            for r, c in zip(records, clips, strict=False):
                r["condition"] = c["path"]
                r["condition_class"] = int(c["label"])
        (dest / task / f"{task}.json").write_text(json.dumps({"samples": records}, indent=2))
        seconds[task] = time.perf_counter() - t0
        log.info("samples: %s, %d in %.1f s", task, num, seconds[task])
    return seconds


def reconstruct(pipe, video: torch.Tensor, audio: torch.Tensor):
    """The autoencoder's round trip of clips (``[B, F, 3, S, S]``, ``[B, N]``), with the
    decoder settings of sampling, as the output of a task "reconstruction"."""
    codec = pipe.codec
    cfg = codec.cfg
    z_a, z_v = codec.encode(video, audio)
    out = codec.decode(z_a, z_v, generator=torch.Generator().manual_seed(0))
    return MMLDMPipelineOutput.from_signals(
        out.frames,
        out.wave,
        task="reconstruction",
        fps=cfg.data.fps,
        sample_rate=cfg.data.sample_rate,
        seeds=[0] * len(video),
        settings={"decoder_steps": cfg.sample.decoder_steps},
    )


def evaluate_demo(
    out: Path, cfg: Config, data_dir: Path, test_dir: Path, samples: Path | None = None
) -> dict:
    """Synthetic-benchmark scores of the reconstructions and of the svg, a2v and v2a samples
    (in ``samples``, default ``out/samples``), with the real data's (ceiling) and shuffled
    pairs' (chance), in class and in time."""
    from mmldm.data.media import read_media
    from mmldm.synthetic.families import max_step
    from mmldm.synthetic.scores import (
        detect_sample,
        read_sidecar,
        reconstruction_scores,
        shuffled_pairing,
        synthetic_scores,
    )

    data = cfg.data
    real_paths = sorted(test_dir.rglob("*.mp4"))
    family = read_sidecar(real_paths[0]).get("family", "ball")

    def detect(path: Path, label: int | None):
        media = read_media(path, sample_rate=data.sample_rate)
        return detect_sample(
            media.frames,
            media.audio,
            fps=data.fps,
            sample_rate=data.sample_rate,
            num_classes=data.num_classes,
            label=label,
            path=str(path),
            family=family,
            max_step=max_step(data, family),
        )

    samples = samples or out / "samples"

    def records(task: str) -> list[dict]:
        folder = samples / task
        return json.loads((folder / f"{task}.json").read_text())["samples"]

    real = {p.resolve(): detect(p, read_sidecar(p)["class_index"]) for p in real_paths}
    result = {"family": family, "real": synthetic_scores(list(real.values()))}
    for task in ("svg", "a2v", "v2a"):
        folder = samples / task
        found = [detect(folder / r["file"], r.get("condition_class")) for r in records(task)]
        result[task] = synthetic_scores(found)
    rec = records("reconstruction")
    recon = [detect(samples / "reconstruction" / r["file"], None) for r in rec]
    sources = [real[Path(r["condition"]).resolve()] for r in rec]
    keys = cfg.autoencoder.key_frames
    result["reconstruction"] = {
        "value": {
            **reconstruction_scores(recon, sources, keys),
            **synthetic_scores(recon)["value"],
        },
        "shuffled": reconstruction_scores(recon, sources, keys, shuffled_pairing(len(rec))),
        "key_frames": list(keys),
    }
    return result


# --------------------------------------------------------------------------------------------
# The gallery page
# --------------------------------------------------------------------------------------------

_TASK_TEXT = {
    "reconstruction": "Held-out clips encoded and decoded by the autoencoder (source: right).",
    "svg": "Sounding videos generated from noise (joint audio-video generation).",
    "a2v": "Video generated for a given audio clip of the held-out set (the given audio plays).",
    "v2a": "Audio generated for a given video clip of the held-out set (the given frames show).",
    "audio": "Audio alone (the video track shows its audio image).",
    "video": "Video alone (no audio track).",
    "long": "Long sounding videos: each clip continues the previous one.",
    "audio-continuation": "A given audio clip continued (spectrogram shown as the video).",
    "video-continuation": "A given video clip continued (silent).",
}

_FAMILY_TEXT = {
    "ball": "ball family: a ball of the class colour bouncing off the walls, a tone of the "
    "class pitch that follows its height, and a click at every bounce.",
    "pulse": "pulse family: a square of the class colour orbiting the centre that swells at "
    "every note, a plucked tone of the class pitch.",
}

_METRIC_TEXT = {
    "video_class_accuracy": "video class accuracy (vs. the condition's / source's class)",
    "audio_class_accuracy": "audio class accuracy (vs. the condition's / source's class)",
    "av_class_agreement": "audio-video class agreement",
    "sync_f1": "{video} / {audio} timing (F1 within one frame; chance: another clip's)",
    "path_consistency": "object moves along a path (plausible frame-to-frame steps)",
    "position_within_2px_key": "object centre within 2 px of the source's: key frames",
    "position_within_2px_between": "object centre within 2 px of the source's: other frames",
    "video_event_f1": "{video}s kept (F1 against the source's)",
    "audio_event_f1": "{audio}s kept (F1 against the source's)",
}


def _metrics_table(metrics: dict) -> str:
    from mmldm.synthetic.detect import EVENT_NAMES

    video_event, audio_event = EVENT_NAMES[metrics.get("family", "ball")]
    rows = []
    for task in ("reconstruction", "svg", "a2v", "v2a"):
        for key, text in _METRIC_TEXT.items():
            value = metrics.get(task, {}).get("value", {}).get(key)
            if value is None:
                continue
            ceiling = metrics["real"]["value"].get(key)
            chance = metrics[task].get("shuffled", {}).get(key)
            text = text.format(video=video_event, audio=audio_event)
            rows.append(
                f"<tr><td>{task}</td><td>{html.escape(text)}</td><td><b>{value:.3f}</b></td>"
                f"<td>{'' if ceiling is None else f'{ceiling:.3f}'}</td>"
                f"<td>{'' if chance is None else f'{chance:.3f}'}</td></tr>"
            )
    return (
        "<table><tr><th>task</th><th>score</th><th>generated</th><th>real data (ceiling)"
        "</th><th>shuffled pairs (chance)</th></tr>" + "".join(rows) + "</table>"
    )


def write_gallery(out: Path, metrics: dict, per_task: int = 4) -> Path:
    """``out/index.html``: samples of every task with their conditions, curves and scores."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>MM-LDM demo</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1200px}video{width:192px;"
        "image-rendering:pixelated;background:#000}figure{display:inline-block;margin:6px;"
        "vertical-align:top}figcaption{font-size:12px;color:#555}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}img.curve{max-width:100%}",
        "</style></head><body><h1>MM-LDM demo</h1>",
        "<p>Everything here was trained on this machine's CPU from synthetic sounding videos "
        f"of the {html.escape(_FAMILY_TEXT[metrics.get('family', 'ball')])}</p>",
        "<h2>Scores</h2>",
        _metrics_table(metrics),
    ]
    for task in SAMPLE_PLAN:
        folder = out / "samples" / task
        record_file = folder / f"{task}.json"
        if not record_file.is_file():
            continue
        records = json.loads(record_file.read_text())["samples"][:per_task]
        parts.append(f"<h2 id='{task}'>{task}</h2><p>{html.escape(_TASK_TEXT[task])}</p>")
        for r in records:
            src = f"samples/{task}/{r['file']}"
            figure = f"<figure><video controls preload='metadata' src='{src}'></video>"
            caption = f"{r['file']} (seed {r['seed']})"
            if r.get("condition"):
                cond = Path(r["condition"])
                rel = cond.relative_to(out) if cond.is_relative_to(out) else cond
                figure += f"<video controls preload='metadata' src='{rel.as_posix()}'></video>"
                caption += f"; condition (class {r.get('condition_class')}) on the right"
            parts.append(f"{figure}<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Training curves</h2>")
    for run in ("vae", "autoencoder", "generator"):
        if (out / run / "loss.png").is_file():
            parts.append(f"<h3>{run}</h3><img class='curve' src='{run}/loss.png'>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    return page
