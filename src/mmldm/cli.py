"""The ``mmldm`` command line. Each subcommand has ``--help`` with its options and an example."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from mmldm import __version__
from mmldm.checkpoint import summarize_checkpoint
from mmldm.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_yaml,
    list_presets,
    load_config,
)
from mmldm.console import setup_logging
from mmldm.errors import MMLDMError
from mmldm.synthetic.classes import FAMILIES
from mmldm.tasks import TASKS

if TYPE_CHECKING:  # annotations only: torch and the pipeline are imported by the commands
    from mmldm.pipeline import MMLDMPipeline

log = logging.getLogger("mmldm")

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class _Command:
    """One subcommand: ``mmldm NAME``, its one-line summary (in the command list and atop its
    ``--help``), an example (the end of its ``--help``), the handler that runs it and the
    function that adds its options."""

    name: str
    summary: str
    example: str
    handler: Handler
    add_options: Callable[[argparse.ArgumentParser], None]


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    group.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")


def _config_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config",
        default=default,
        metavar="C",
        help=f"a preset name ({', '.join(list_presets())}) or a YAML file"
        + (f"; default {default}" if default else ""),
    )
    _overrides_option(
        group,
        "override one config value by its dotted key, e.g. --set dit.depth=12 (repeatable)",
    )


def _device_options(p: argparse.ArgumentParser, dtype: bool = False) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if a GPU is seen), cpu, cuda:1")
    if dtype:
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _settings_option(p: argparse.ArgumentParser) -> None:
    """``--set`` of the commands that use a trained model: its runtime settings only."""
    _overrides_option(
        p,
        "change a setting of the model's stored config (repeatable): sample.*, vocoder.*, "
        "data.num_workers",
    )


def _overrides_option(container: argparse._ActionsContainer, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, [] when not given."""
    container.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The resolved config of a command, logged at start (every training command calls this)."""
    cfg = load_config(args.config, args.overrides)
    log.info("resolved config (%s):\n%s", cfg.name, config_to_yaml(cfg).rstrip())
    return cfg


def _add_subcommand(subparsers: argparse._SubParsersAction, command: _Command) -> None:
    parser = subparsers.add_parser(
        command.name,
        help=command.summary,
        description=command.summary,
        epilog="example:\n  " + command.example,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=command.handler)
    command.add_options(parser)


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_info(summary: dict, show_config: bool = True) -> str:
    lines = [
        f"checkpoint      {summary['path']}",
        f"kind            {summary['kind']}",
        f"step            {summary['step']}",
        f"written by      mmldm {summary['version']} (checkpoint format {summary['format']})",
        f"file size       {summary['bytes'] / 2**20:.1f} MiB",
        "training state  "
        + ("yes (optimizer, RNG: resumable)" if summary["training_state"] else "no (weights only)"),
        "",
        f"{'module':<36}{'parameters':>14}{'tensor elements':>18}",
    ]
    elements = summary["tensor_elements"]
    for name in sorted(elements):
        top = "." not in name
        params = summary["parameters"].get(name) if top else None
        label = name if top else "  " + name
        shown = _human(params) if params is not None else ""
        lines.append(f"{label:<36}{shown:>14}{_human(elements[name]):>18}")
    total = sum(v for k, v in elements.items() if "." not in k)
    lines.append(
        f"{'total':<36}{_human(sum(summary['parameters'].values())):>14}{_human(total):>18}"
    )
    if show_config and summary["config"] is not None:
        cfg = config_from_dict(summary["config"], source=f"config stored in {summary['path']}")
        lines += ["", f"config ({cfg.name}):", config_to_yaml(cfg).rstrip()]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    print(format_info(summarize_checkpoint(args.checkpoint), show_config=not args.no_config))
    return 0


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(list_presets()))
        return 0
    cfg = load_config(args.config, args.overrides)
    text = config_to_yaml(cfg)
    if args.out:
        Path(args.out).write_text(text)
        log.info("wrote %s", args.out)
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------------------------
# synth-data
# --------------------------------------------------------------------------------------------


def cmd_synth_data(args: argparse.Namespace) -> int:
    from mmldm.synthetic.families import synthesize_dataset

    cfg = config_from_args(args)
    paths = synthesize_dataset(
        Path(args.out),
        args.num_clips,
        seed=args.seed,
        data=cfg.data,
        duration=args.duration,
        family=args.family,
    )
    log.info("wrote %d sounding videos to %s", len(paths), args.out)
    return 0


# --------------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------------


def cmd_preprocess(args: argparse.Namespace) -> int:
    from mmldm.data.dataset import SoundingVideoDataset

    cfg = config_from_args(args)
    dataset = SoundingVideoDataset(args.data, cfg.data, cache_dir=args.cache)
    written = dataset.preprocess()
    log.info(
        "%s: %d videos decoded into %s (%d already cached, %d skipped)",
        args.data,
        written,
        args.cache,
        len(dataset.videos) - written,
        len(dataset.skipped),
    )
    return 0


# --------------------------------------------------------------------------------------------
# training commands
# --------------------------------------------------------------------------------------------


def _run_data_options(p: argparse.ArgumentParser) -> None:
    """--data and --cache of a run that reads clips (both stored in the run for --resume)."""
    p.add_argument("--data", help="data folder or manifest (stored in the run for --resume)")
    p.add_argument("--cache", help="decode cache folder (see mmldm preprocess)")


def _run_options(p: argparse.ArgumentParser, stage: str) -> None:
    """--out, --resume and --max-steps of a training run; ``stage`` names train.STAGE.*."""
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN", help="continue this run from its last checkpoint")
    p.add_argument("--max-steps", type=int, help=f"stop here (default train.{stage}.max_steps)")


def _training_options(p: argparse.ArgumentParser, stage: str) -> None:
    if stage != "generator":
        _run_data_options(p)
        p.add_argument(
            "--vae",
            help="KL-VAE weights: sets vae.pretrained (diffusers folder, single file or an "
            "mmldm train-vae run)",
        )
        if stage == "autoencoder":
            p.add_argument(
                "--unet",
                help="Stable Diffusion 1.x UNet (diffusers folder) to start the signal decoder "
                "from: sets decoder.pretrained_unet",
            )
        p.add_argument(
            "--allow-random-init",
            action="store_true",
            help="start from random weights where pretrained ones are missing (VAE, SD-layout "
            "UNet) instead of refusing: sets train.allow_random_init",
        )
    _run_options(p, stage)
    _config_options(p)
    _common(p)


def _distill_options(p: argparse.ArgumentParser) -> None:
    _model_options(p, False, "the autoencoder run or checkpoint to distil")
    _run_data_options(p)
    _run_options(p, "distill")
    _overrides_option(
        p, "override distill.*, train.* or sample.* of the autoencoder's config (repeatable)"
    )
    _common(p)


def _model_options(p: argparse.ArgumentParser, generator: bool, autoencoder_help: str) -> None:
    """``--model MODEL`` (a model folder), or the training runs it stands for."""
    group = p.add_argument_group("model (--model, or the runs)")
    group.add_argument("--model", help="a model folder (mmldm export)")
    if generator:
        group.add_argument("--generator", help="generator run or checkpoint")
    group.add_argument("--autoencoder", help=autoencoder_help)
    if generator:
        group.add_argument(
            "--no-ema", action="store_true", help="the generator's raw weights, not its EMA"
        )


def resolve_model(args: argparse.Namespace, required: bool = True) -> None:
    """``--model MODEL`` -> ``args.generator`` / ``args.autoencoder`` (the folder's weights
    files, from which the codec finds the folder's VAE, vocoder and distilled decoders)."""
    runs = ["generator", "autoencoder"] if hasattr(args, "generator") else ["autoencoder"]
    given = [f"--{name}" for name in runs if getattr(args, name)]
    if args.model:
        if given:
            raise ConfigError(f"--model replaces {' and '.join(given)}: give one or the other")
        from mmldm.model_folder import read_model_folder

        parts = read_model_folder(args.model)
        for name in runs:
            setattr(args, name, str(getattr(parts, name)))
    elif required and len(given) < len(runs):
        raise ConfigError("give --model MODEL, or " + " and ".join(f"--{n} RUN" for n in runs))


def _decoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decoder",
        help="a distilled decoder of the autoencoder (mmldm distill-decoder run or checkpoint): "
        "few steps, no guidance",
    )
    p.add_argument(
        "--decoder-steps",
        type=int,
        help="signal decoder steps (default sample.decoder_steps: the paper's 50, or the "
        "distilled decoder's K)",
    )
    p.add_argument(
        "--vae-decoder",
        help="a tiny VAE decoder of the autoencoder (mmldm distill-vae run or checkpoint)",
    )
    p.add_argument(
        "--no-distilled",
        action="store_true",
        help="do not use the distilled decoders a model folder ships (the autoencoder's own "
        "decoder and the KL-VAE's decode); --decoder / --vae-decoder still apply",
    )


def _training_setup(args: argparse.Namespace) -> tuple[Config, Path, str, str | None]:
    """(config, run folder, data, cache) for a fresh or a resumed run."""
    import json

    from mmldm.train.common import run_config

    run = Path(args.resume or args.out or "")
    if not args.resume and not args.out:
        raise ConfigError("give --out RUN for a new run or --resume RUN")
    overrides = list(args.overrides)
    if not args.resume:  # a resumed run keeps its stored config
        flags = {
            "vae.pretrained": getattr(args, "vae", None),
            "decoder.pretrained_unet": getattr(args, "unet", None),
            "train.allow_random_init": getattr(args, "allow_random_init", False) or None,
        }
        overrides += [f"{key}={value}" for key, value in flags.items() if value]
    cfg = run_config(run, args.config, overrides, resume=bool(args.resume))
    stored = run / "data.json"
    if args.resume and stored.is_file():
        saved = json.loads(stored.read_text())
        args.data = args.data or saved["data"]
        args.cache = args.cache or saved.get("cache")
    if not args.data:
        raise ConfigError("--data is required")
    run.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:  # one process of a distributed launch reports
        stored.write_text(json.dumps({"data": str(args.data), "cache": args.cache}))
        log.info("resolved config (%s):\n%s", cfg.name, config_to_yaml(cfg).rstrip())
    return cfg, run, args.data, args.cache


def cmd_train_on_clips(args: argparse.Namespace) -> int:
    """train-vae (stage 0) and train-autoencoder (stage 1): the stages that train on clips."""
    if args.command == "train-vae":
        from mmldm.train.vae import train_vae as train
    else:
        from mmldm.train.autoencoder import train_autoencoder as train

    cfg, run, data, cache = _training_setup(args)
    path = train(
        cfg, data, run, resume=bool(args.resume), cache_dir=cache, max_steps=args.max_steps
    )
    log.info("done: %s", path)
    return 0


def cmd_distill_decoder(args: argparse.Namespace) -> int:
    """distill-decoder (the signal decoder) and distill-vae (a tiny VAE decoder)."""
    import json

    from mmldm.train.distill import distill_decoder

    if not args.resume and not args.out:
        raise ConfigError("give --out RUN for a new run or --resume RUN")
    run = Path(args.resume or args.out)
    resolve_model(args, required=False)  # a resumed run may name its own
    autoencoder, data, cache = args.autoencoder, args.data, args.cache
    stored = run / "data.json"
    if args.resume and stored.is_file():
        saved = json.loads(stored.read_text())
        autoencoder = autoencoder or saved["autoencoder"]
        data, cache = data or saved["data"], cache or saved.get("cache")
    if not autoencoder or not data:
        raise ConfigError("--autoencoder (or --model) and --data are required")
    path = distill_decoder(
        autoencoder,
        data,
        run,
        part="vae" if args.command == "distill-vae" else "signal",
        overrides=args.overrides,
        resume=bool(args.resume),
        cache_dir=cache,
        max_steps=args.max_steps,
    )
    log.info("done: %s", path)
    return 0


# --------------------------------------------------------------------------------------------
# reconstruct
# --------------------------------------------------------------------------------------------


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from mmldm.codec import Codec
    from mmldm.data.clips import frames_to_tensor_layout
    from mmldm.data.dataset import decode_span
    from mmldm.data.media import write_video

    resolve_model(args)
    device = torch.device(args.device)
    codec = Codec.load(
        args.autoencoder,
        device=device,
        decoder=args.decoder,
        vae_decoder=args.vae_decoder,
        vocoder=args.vocoder,
        folder_decoders=not args.no_distilled,
        overrides=args.overrides,
    )
    cfg = codec.cfg
    frames, audio = decode_span(Path(args.input), cfg.data, args.start, cfg.data.clip_seconds)
    video = torch.from_numpy(frames_to_tensor_layout(frames))[None].to(device)
    wave = torch.from_numpy(audio)[None].to(device)
    z_a, z_v = codec.encode(video, wave)
    generator = torch.Generator(device).manual_seed(args.seed)
    out = codec.decode(z_a, z_v, steps=args.decoder_steps, generator=generator, desc="decoding")
    write_video(
        args.out,
        out.frames[0].permute(0, 2, 3, 1).cpu().numpy(),
        cfg.data.fps,
        out.wave[0].cpu().numpy(),
        out.sample_rate,
    )
    log.info(
        "wrote %s (%d frames, %.2f s of audio, vocoder: %s)",
        args.out,
        cfg.data.num_frames,
        out.wave.shape[-1] / out.sample_rate,
        codec.get_vocoder().kind,
    )
    return 0


# --------------------------------------------------------------------------------------------
# stage 2: latents, generator, sampling
# --------------------------------------------------------------------------------------------


def cmd_cache_latents(args: argparse.Namespace) -> int:
    from mmldm.data.cache_latents import cache_latents

    resolve_model(args)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    cache_latents(
        args.autoencoder,
        args.data,
        args.out,
        device=device,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        rank=rank,
        world=world,
        cache_dir=args.cache,
        overrides=args.overrides,
    )
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from mmldm.train.generator import train_generator

    if args.long and not args.resume:
        args.overrides = [*args.overrides, "dit.long=true"]
    args.vae = args.cache = None
    args.data = args.latents
    cfg, run, latents, _ = _training_setup(args)
    path = train_generator(cfg, latents, run, resume=bool(args.resume), max_steps=args.max_steps)
    log.info("done: %s", path)
    return 0


def _load_pipeline(args: argparse.Namespace) -> MMLDMPipeline:
    """The generator and autoencoder of ``mmldm sample`` on ``--device`` in ``--dtype``."""
    import torch

    from mmldm.pipeline import MMLDMPipeline

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    return MMLDMPipeline.from_pretrained(
        args.generator,
        autoencoder=args.autoencoder,
        device=args.device,
        torch_dtype=dtype[args.dtype],
        vocoder=args.vocoder,
        decoder=args.decoder,
        vae_decoder=args.vae_decoder,
        use_ema=not args.no_ema,
        distilled=not args.no_distilled,
        overrides=getattr(args, "overrides", ()),
    )


# the options of `mmldm sample` -> the pipeline's arguments, the same for every batch
_GENERATE_ARGS = {
    "clips": "clips",
    "steps": "num_inference_steps",
    "sampler": "sampler",
    "guidance_audio": "guidance_scale_audio",
    "guidance_video": "guidance_scale_video",
    "decoder_steps": "decoder_inference_steps",
}


def cmd_sample(args: argparse.Namespace) -> int:
    from mmldm.batch import ConditionError, find_conditions, sample_batch

    resolve_model(args)
    kind = TASKS[args.task].given  # the modality of the given clip, if the task takes one
    if kind and not getattr(args, kind):
        raise ConditionError(f"--task {args.task} needs --{kind} FILE|FOLDER|MANIFEST")
    # before the models load: a wrong path fails at once
    conditions = find_conditions(getattr(args, kind), kind, args.start) if kind else None
    pipe = _load_pipeline(args)
    report = sample_batch(
        pipe,
        args.task,
        conditions,
        args.out,
        num=args.num if args.num is not None else (1 if kind else 4),
        seed=args.seed,
        labels=None if args.label is None else [pipe.class_index(y) for y in args.label],
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        info={
            "model": args.model,
            "generator": args.generator,
            "autoencoder": args.autoencoder,
            "weights": "raw" if args.no_ema else "EMA where the generator has one",
        },
        **{name: getattr(args, option) for option, name in _GENERATE_ARGS.items()},
    )
    log.info(
        "%s: %d %s samples (%d kept from an earlier run)",
        args.out,
        len(report.records),
        args.task,
        report.skipped,
    )
    if report.failures:
        print(
            f"mmldm sample: {len(report.failures)} of {len(conditions or [])} conditions "
            "failed (listed above and in the JSON record); the others were written",
            file=sys.stderr,
        )
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# export, app
# --------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from mmldm.export import export_model

    try:
        export_model(
            args.generator,
            args.autoencoder,
            args.out,
            vocoder=args.vocoder,
            decoder=args.decoder,
            vae_decoder=args.vae_decoder,
            scores=args.scores,
            use_ema=not args.no_ema,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ValueError) as err:
        print(f"mmldm export: error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    resolve_model(args)
    try:
        from mmldm.app import serve
    except ImportError as err:
        print(f"mmldm app: needs Gradio ({err}): pip install 'mmldm[app]'", file=sys.stderr)
        return 1
    pipe = _load_pipeline(args)
    serve(pipe, host=args.host, port=args.port, outputs=args.outputs)
    return 0


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from mmldm.pipeline import MMLDMPipeline
    from mmldm.synthetic.demo import StageFailed, run_demo

    verbosity = ["-q"] if args.quiet else ["-v"] * args.verbose  # handed on to every stage

    def command(argv: list[str]) -> int:
        return main([*argv, *verbosity])

    try:
        run_demo(
            args.out,
            args.config,
            args.overrides,
            family=args.family,
            command=command,
            load_pipeline=MMLDMPipeline.from_pretrained,
        )
    except StageFailed as err:
        print(f"mmldm demo: {err}", file=sys.stderr)
        return err.code
    return 0


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmldm.metrics.evaluate import evaluate_command

    return evaluate_command(args)


# --------------------------------------------------------------------------------------------
# parser: one function per subcommand, each adding its options in the order --help lists them
# --------------------------------------------------------------------------------------------


def _info_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run folder, a checkpoint folder or a .safetensors file")
    p.add_argument("--no-config", action="store_true", help="omit the stored config")
    _common(p)


def _config_command_options(p: argparse.ArgumentParser) -> None:
    _config_options(p, default="paper_landscape")
    p.add_argument("--out", help="write the resolved YAML here instead of printing it")
    p.add_argument("--list", action="store_true", help="list the preset names and exit")
    _common(p)


def _family_option(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--family`` of the synthetic data (:data:`FAMILIES`, default ball)."""
    p.add_argument("--family", choices=FAMILIES, default="ball", help=help_text)


def _synth_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder: OUT/<class>/<id>.mp4 + .json")
    p.add_argument("--num-clips", type=int, required=True, help="number of videos to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per video (default: two clips of the config, data.num_frames / data.fps)",
    )
    _family_option(
        p,
        "ball: a ball bouncing off the walls, a click at each bounce (the demo's); pulse: "
        "a square orbiting the centre that swells at each plucked note (a second family to "
        "check settings chosen on the first)",
    )
    _config_options(p, default="demo")
    _common(p)


def _preprocess_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data folder or manifest (.csv / .jsonl)")
    p.add_argument(
        "--cache",
        required=True,
        help="cache folder (entries are keyed by the "
        "source file and the signal settings, stale ones are never read)",
    )
    _config_options(p)
    _common(p)


def _reconstruct_options(p: argparse.ArgumentParser) -> None:
    _model_options(p, False, "autoencoder run or checkpoint")
    _decoder_options(p)
    p.add_argument("--steps", dest="decoder_steps", type=int, help="same as --decoder-steps")
    p.add_argument("--input", required=True, help="a video file with sound")
    p.add_argument("--out", required=True, help="output mp4")
    p.add_argument("--start", type=float, default=0.0, help="clip start in seconds")
    p.add_argument("--vocoder", help="HiFi-GAN folder (default vocoder.path of the checkpoint)")
    _device_options(p)
    _settings_option(p)
    p.add_argument(
        "--seed", type=int, default=0, help="output j of the batch is drawn from seed + j"
    )
    _common(p)


def _cache_latents_options(p: argparse.ArgumentParser) -> None:
    _model_options(p, False, "autoencoder run or checkpoint")
    p.add_argument("--data", required=True, help="data folder or manifest")
    p.add_argument("--out", required=True, help="latent cache folder (resumable)")
    p.add_argument("--cache", help="decode cache folder (see mmldm preprocess)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=256, help="clips per shard file")
    _device_options(p)
    _settings_option(p)
    _common(p)


def _train_generator_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latents", help="latent cache folder (from cache-latents)")
    p.add_argument(
        "--long", action="store_true", help="train the long / continuation branch (dit.long=true)"
    )
    _training_options(p, "generator")


def _sample_options(p: argparse.ArgumentParser) -> None:
    _model_options(p, True, "the autoencoder the generator was trained on")
    _decoder_options(p)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument(
        "--num",
        type=int,
        help="samples (default 4), or samples per condition for a2v / v2a / continuations "
        "(default 1)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--audio",
        help="a2v / audio-continuation: a wav or any video with sound, a folder of them "
        "(recursively), or a .csv / .jsonl manifest (path, optional start)",
    )
    p.add_argument(
        "--video", help="v2a / video-continuation: a video file, a folder of them or a manifest"
    )
    p.add_argument("--start", type=float, default=0.0, help="where the given clips start (s)")
    p.add_argument(
        "--overwrite", action="store_true", help="redo outputs that exist (default: skip them)"
    )
    p.add_argument("--clips", type=int, help="clips of long / continuation outputs")
    p.add_argument(
        "--label",
        nargs="+",
        help="class-conditional models: one class (its index or name) for all outputs, or one "
        "per output",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="output j of the batch is drawn from seed + j"
    )
    p.add_argument("--steps", type=int, help="sampling steps (default sample.steps)")
    p.add_argument("--sampler", choices=["ddim", "dpm"], help="default sample.sampler")
    p.add_argument("--guidance-audio", type=float, help="eq. 9 scale for generated audio")
    p.add_argument("--guidance-video", type=float, help="eq. 9 scale for generated video")
    p.add_argument("--batch-size", type=int, help="outputs per batch (default sample.batch_size)")
    p.add_argument("--vocoder", help="HiFi-GAN folder (default vocoder.path)")
    _device_options(p, dtype=True)
    _settings_option(p)
    _common(p)


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generator", required=True, help="generator run or checkpoint")
    p.add_argument("--autoencoder", required=True, help="the autoencoder it was trained on")
    p.add_argument(
        "--vocoder",
        help="HiFi-GAN folder to ship (default the autoencoder's vocoder.path; none: the model "
        "decodes audio with Griffin-Lim)",
    )
    p.add_argument("--decoder", help="a distilled signal decoder to ship and decode with")
    p.add_argument("--vae-decoder", help="a tiny VAE decoder to ship and decode with")
    p.add_argument("--scores", help="an `mmldm evaluate --out` report, for the model card")
    p.add_argument(
        "--no-ema", action="store_true", help="the generator's raw weights instead of its EMA"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--out", required=True, help="the model folder to write")
    _common(p)


def _app_options(p: argparse.ArgumentParser) -> None:
    _model_options(p, True, "the autoencoder the generator was trained on")
    p.add_argument("--vocoder", help="HiFi-GAN folder (default: the model's)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default local)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--outputs", help="folder for the generated mp4s (default: a temporary one)")
    _device_options(p, dtype=True)
    _settings_option(p)
    p.set_defaults(decoder=None, vae_decoder=None, no_distilled=False)  # the model's own
    _common(p)


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    _family_option(p, "the synthetic family to train on (see synth-data --family)")
    _config_options(p, default="demo")
    _common(p)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, help="real videos: a data folder or manifest")
    p.add_argument("--fake", required=True, help="generated videos: a folder of mp4 files")
    p.add_argument(
        "--i3d",
        help="I3D weights for FVD/KVD: i3d_pretrained_400.pt (state dict) or i3d_torchscript.pt",
    )
    p.add_argument("--vggish", help="VGGish weights (torchvggish state dict) for FAD")
    p.add_argument("--vggish-pca", help="VGGish PCA parameters (vggish_pca_params)")
    p.add_argument("--audioclip", help="AudioCLIP-Full-Training.pt for MM-Diffusion's FAD")
    p.add_argument(
        "--resolution",
        type=int,
        choices=[64, 256],
        default=256,
        help="frames are resized to this before the I3D preprocessing (paper: both)",
    )
    p.add_argument("--num", type=int, default=2048, help="clips per side (paper: 2048)")
    p.add_argument("--batch-size", type=int, default=16)
    _device_options(p)
    p.add_argument("--seed", type=int, default=0, help="which clips are drawn when subsampling")
    p.add_argument("--out", help="write the metrics and settings as JSON here")
    _config_options(p)
    _common(p)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------

# in the order `mmldm --help` lists them
_COMMANDS: tuple[_Command, ...] = (
    _Command(
        "info",
        "print a checkpoint's step, parameter counts and stored config",
        "mmldm info runs/generator            # latest checkpoint of a run\n"
        "  mmldm info runs/generator/checkpoints/step_00010000 --no-config",
        cmd_info,
        _info_options,
    ),
    _Command(
        "config",
        "print the resolved config of a preset or YAML file with overrides",
        "mmldm config --config paper_aist --set dit.depth=12 --out my_config.yaml",
        cmd_config,
        _config_command_options,
    ),
    _Command(
        "synth-data",
        "write a synthetic sounding-video dataset with exactly known audio-visual ground truth",
        "mmldm synth-data --out data/synth --num-clips 200 --seed 0 --config demo",
        cmd_synth_data,
        _synth_data_options,
    ),
    _Command(
        "preprocess",
        "decode a dataset once into a cache of frames and audio, so training reads arrays",
        "mmldm preprocess --data data/landscape --cache cache/landscape --config paper_landscape",
        cmd_preprocess,
        _preprocess_options,
    ),
    _Command(
        "train-vae",
        "stage 0: fine-tune the KL-VAE decoder on frames and audio images (or train a small one)",
        "mmldm train-vae --config paper_landscape --vae models/sd-vae --data data/landscape "
        "--out runs/vae",
        cmd_train_on_clips,
        partial(_training_options, stage="vae"),
    ),
    _Command(
        "train-autoencoder",
        "stage 1: train the multi-modal autoencoder (accelerate: 1 process, GPUs, nodes)",
        "mmldm train-autoencoder --config paper_landscape --vae runs/vae --data data/landscape "
        "--out runs/ae\n  accelerate launch --num_processes 8 -m mmldm train-autoencoder ...\n"
        "  mmldm train-autoencoder --resume runs/ae",
        cmd_train_on_clips,
        partial(_training_options, stage="autoencoder"),
    ),
    _Command(
        "distill-decoder",
        "after stage 1: a few-step signal decoder (K passes, no guidance) from the autoencoder's",
        "mmldm distill-decoder --autoencoder runs/ae --data data/landscape --out runs/dec "
        "--set distill.steps=4\n  mmldm sample ... --decoder runs/dec\n"
        "  mmldm distill-decoder --resume runs/dec",
        cmd_distill_decoder,
        _distill_options,
    ),
    _Command(
        "distill-vae",
        "after stage 1: a tiny VAE decoder (TAESD's architecture) in place of the KL-VAE's",
        "mmldm distill-vae --autoencoder runs/ae --data data/landscape --out runs/tiny\n"
        "  mmldm sample ... --vae-decoder runs/tiny",
        cmd_distill_decoder,
        _distill_options,
    ),
    _Command(
        "reconstruct",
        "encode a real clip with a trained autoencoder and decode it back to an mp4 with sound",
        "mmldm reconstruct --autoencoder runs/ae --input clip.mp4 --out recon.mp4",
        cmd_reconstruct,
        _reconstruct_options,
    ),
    _Command(
        "cache-latents",
        "encode a dataset once with the frozen autoencoder into latent shards (+ statistics)",
        "mmldm cache-latents --autoencoder runs/ae --data data/landscape --out latents/landscape"
        "\n  torchrun --nproc_per_node 4 -m mmldm cache-latents ...   # sharded across processes",
        cmd_cache_latents,
        _cache_latents_options,
    ),
    _Command(
        "train-generator",
        "stage 2: train the multi-modal DiT on cached latents (accelerate, bf16 on GPU, EMA)",
        "mmldm train-generator --config paper_landscape --latents latents/landscape --out "
        "runs/gen\n  mmldm train-generator --config paper_landscape --latents latents/landscape "
        "--out runs/gen_long --long",
        cmd_train_generator,
        _train_generator_options,
    ),
    _Command(
        "sample",
        "generate sounding videos: svg, a2v, v2a, audio, video, long, audio/video-continuation",
        "mmldm sample --generator runs/gen --autoencoder runs/ae --task svg --num 8 --out out/\n"
        "  mmldm sample --generator runs/gen --autoencoder runs/ae --task a2v --audio song.wav "
        "--num 4 --out out/a2v\n"
        "  mmldm sample --generator runs/gen --autoencoder runs/ae --task a2v --audio clips/ "
        "--out out/a2v   # one output per clip, models loaded once",
        cmd_sample,
        _sample_options,
    ),
    _Command(
        "export",
        "one self-contained model folder (diffusers layout, model card) from the training runs",
        "mmldm export --generator runs/gen --autoencoder runs/ae --vocoder weights/hifigan "
        "--out models/landscape\n  mmldm sample --model models/landscape --task svg --out out/",
        cmd_export,
        _export_options,
    ),
    _Command(
        "app",
        "a local web page (Gradio) to try a model: pick a task, upload a clip, play the result",
        "pip install 'mmldm[app]'; mmldm app --model models/landscape   # http://127.0.0.1:7860",
        cmd_app,
        _app_options,
    ),
    _Command(
        "demo",
        "the whole pipeline on a CPU: synthetic data, every stage trained, every task sampled, "
        "scores, DIR/index.html",
        "mmldm demo --out runs/demo        # re-running skips the stages already done",
        cmd_demo,
        _demo_options,
    ),
    _Command(
        "evaluate",
        "FVD / KVD / FAD and the synthetic-benchmark scores of generated sounding videos",
        "mmldm evaluate --real data/landscape --fake samples/svg \\\n"
        "    --i3d weights/i3d_pretrained_400.pt --vggish weights/vggish.pth \\\n"
        "    --resolution 256 --out metrics.json",
        cmd_evaluate,
        _evaluate_options,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmldm",
        description="MM-LDM: multi-modal latent diffusion for sounding video generation.",
        epilog="Run 'mmldm COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"mmldm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        _add_subcommand(subparsers, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    if getattr(args, "device", None) == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"mmldm {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except (MMLDMError, FileNotFoundError) as err:  # the user's to fix: one line, no traceback
        print(f"mmldm {args.command}: error: {err}", file=sys.stderr)
        return 1
