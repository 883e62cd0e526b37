"""Stage 2 end to end on synthetic data: latent cache, generator training, every task."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from mmldm.checkpoint import CheckpointError, load_checkpoint
from mmldm.cli import main
from mmldm.config import load_config
from mmldm.data.latents import LatentCacheError, LatentDataset, shard_name
from mmldm.data.media import probe, read_media
from mmldm.pipeline import MMLDMPipeline


def test_latent_cache_contents(trained):
    ds = LatentDataset(trained["latents"])
    cfg = load_config("tiny")
    assert len(ds) == 12 and ds.z_a.shape[1:] == cfg.audio_latent_shape
    # normalised to zero mean and unit variance per channel (docs/design.md §8.3)
    for z in (ds.z_a, ds.z_v):
        assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(z.shape[1]), atol=1e-4)
        assert torch.allclose(
            z.std(dim=(0, 2, 3), unbiased=False), torch.ones(z.shape[1]), atol=1e-3
        )
    assert sum(p >= 0 for p in ds.prev) == 6  # every second clip follows its predecessor
    item = ds[next(i for i, p in enumerate(ds.prev) if p >= 0)]
    assert item["has_prev"] and item["prev_a"].abs().sum() > 0


def test_latent_cache_resumes_and_refuses_other_autoencoders(trained, tmp_path):
    latents = trained["latents"]
    kept = {k: (latents / shard_name(k)).stat().st_mtime_ns for k in (0, 2)}
    (latents / shard_name(1)).unlink()  # as if killed before writing shard 1
    (latents / "stats.json").unlink()
    assert (
        main(
            [
                "cache-latents",
                "--autoencoder",
                str(trained["ae"]),
                "--data",
                str(trained["synth"]),
                "--out",
                str(latents),
                "--shard-size",
                "5",
                "-q",
            ]
        )
        == 0
    )
    assert (latents / shard_name(1)).is_file() and (latents / "stats.json").is_file()
    assert {k: (latents / shard_name(k)).stat().st_mtime_ns for k in (0, 2)} == kept
    other = tmp_path / "other_ae"
    assert (
        main(
            [
                "train-autoencoder",
                "--data",
                str(trained["synth"]),
                "--out",
                str(other),
                "--max-steps",
                "1",
                "--set",
                "train.seed=5",
                "--set",
                "train.sample_every=100",
                *TINY,
            ]
        )
        == 0
    )
    from mmldm.data.cache_latents import cache_latents

    with pytest.raises(LatentCacheError, match="another autoencoder"):
        cache_latents(other, trained["synth"], latents, shard_size=5)
    with pytest.raises(CheckpointError, match="trained on the latents of"):
        MMLDMPipeline.from_pretrained(trained["gen"], autoencoder=other)


def test_generator_checkpoint(trained):
    ckpt = load_checkpoint(trained["gen"], kind="generator")
    assert set(ckpt.modules) == {"dit", "ema", "latent_stats"}
    assert ckpt.config.dit.long and ckpt.step == 2
    samples = trained["gen"] / "samples" / "step_00000002"  # written while training
    assert probe(samples / "svg_0000.mp4").has_audio and list(samples.glob("svg_sheet_*.png"))


def test_early_ema_follows_the_model_and_sample_can_skip_it(trained, tmp_path):
    """After 2 steps the EMA is near the trained weights, not the initial ones: the adaLN-Zero
    layers start at 0, and with the warm-up (decays 0.1, then 0.18) the EMA holds ~90% of
    their trained value where a constant decay (0.9 in the tiny preset) would hold ~15%;
    --no-ema samples the raw weights."""
    ckpt = load_checkpoint(trained["gen"], kind="generator")
    raw, ema = ckpt.state_dict("dit"), ckpt.state_dict("ema")
    zero_init = [k for k in raw if ".ada." in k and raw[k].any()]  # those trained so far
    assert len(zero_init) >= 4
    lag = sum((raw[k] - ema[k]).abs().sum() for k in zero_init)
    assert lag < 0.3 * sum(raw[k].abs().sum() for k in zero_init)
    args = ["sample", "--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    out = tmp_path / "raw"
    assert (
        main(
            [
                *args,
                "--task",
                "svg",
                "--num",
                "1",
                "--steps",
                "2",
                "--no-ema",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    assert json.loads((out / "svg.json").read_text())["weights"] == "raw"
    pipe = MMLDMPipeline.from_pretrained(trained["gen"], autoencoder=trained["ae"], use_ema=False)
    assert all(torch.equal(v, raw[k]) for k, v in pipe.dit.state_dict().items() if k in raw)


@pytest.fixture(scope="module")
def pipe(trained):
    return MMLDMPipeline.from_pretrained(trained["gen"], autoencoder=trained["ae"])


def test_same_seed_same_output(pipe):
    a = pipe.generate("svg", 2, seed=3, num_inference_steps=3)
    b = pipe.generate("svg", 2, seed=3, num_inference_steps=3)
    c = pipe.generate("svg", 2, seed=4, num_inference_steps=3)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.frames, c.frames)


def test_conditional_tasks_keep_the_given_modality(pipe):
    cfg = pipe.cfg
    n = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    audio = torch.sin(torch.arange(n) / 16000 * 2 * torch.pi * 440) * 0.3
    out = pipe.generate("a2v", 2, audio=audio, num_inference_steps=3)
    assert torch.equal(out.audio, audio.expand(2, -1))
    assert out.frames.shape == (2, cfg.data.num_frames, 3, 32, 32)
    video = torch.rand(cfg.data.num_frames, 3, 32, 32) * 2 - 1
    out = pipe.generate("v2a", 1, video=video, num_inference_steps=3)
    assert torch.allclose(out.frames[0], (video + 1) / 2) and out.audio.shape == (1, n)


def _check_sample_folder(folder, task, frames, seconds, has_audio=True, num=2):
    cfg = load_config("tiny")
    record = json.loads((folder / f"{task}.json").read_text())
    assert len(record["samples"]) == num
    for sample in record["samples"]:
        path = folder / sample["file"]
        info = probe(path)
        assert info.num_frames == frames and info.has_audio == has_audio
        if has_audio:
            audio = read_media(path, sample_rate=cfg.data.sample_rate).audio
            assert abs(len(audio) - seconds * cfg.data.sample_rate) <= 1024
    assert list(folder.glob(f"{task}_sheet_*.png"))


@pytest.mark.parametrize(
    ("task", "given", "clips"),
    [
        ("svg", None, 1),
        ("a2v", "audio", 1),
        ("v2a", "video", 1),
        ("audio", None, 1),
        ("video", None, 1),
        ("long", None, 3),
        ("audio-continuation", "audio", 2),
        ("video-continuation", "video", 2),
    ],
)
def test_every_task_writes_playable_mp4s(trained, tmp_path, task, given, clips):
    cfg = load_config("tiny")
    source = next(trained["synth"].rglob("*.mp4"))
    out = tmp_path / task
    args = [
        "sample",
        "--generator",
        str(trained["gen"]),
        "--autoencoder",
        str(trained["ae"]),
        "--task",
        task,
        "--num",
        "2",
        "--out",
        str(out),
        "--steps",
        "2",
        "-q",
    ]
    if given:
        args += [f"--{given}", str(source)]
    if clips > 1:
        args += ["--clips", str(clips)]
    assert main(args) == 0
    _check_sample_folder(
        out,
        task,
        clips * cfg.data.num_frames,
        clips * cfg.data.clip_seconds,
        has_audio=task not in ("video", "video-continuation"),
    )
    if task == "a2v":  # the given audio is in the output (through AAC: correlated, not equal)
        given_audio = read_media(source, sample_rate=16000, duration=0.4).audio
        got = read_media(out / f"{source.stem}_00.mp4", sample_rate=16000).audio
        got = got[: len(given_audio)]
        assert np.corrcoef(given_audio, got)[0, 1] > 0.9


def test_distilled_decoders_in_the_pipeline_and_the_cli(trained, tmp_path):
    """A few-step signal decoder and a tiny VAE decoder of the autoencoder: the pipeline decodes
    with both (2 unguided passes), the sample command takes them, its records say so."""
    dec, tiny = tmp_path / "dec", tmp_path / "tiny"
    common = ["--autoencoder", str(trained["ae"]), "--data", str(trained["synth"]), "-q"]
    common += ["--max-steps", "1", "--set", "train.sample_every=100"]
    assert main(["distill-decoder", *common, "--out", str(dec), "--set", "distill.steps=2"]) == 0
    assert main(["distill-vae", *common, "--out", str(tiny), "--set", "distill.vae_width=8"]) == 0
    pipe = MMLDMPipeline.from_pretrained(
        trained["gen"], autoencoder=trained["ae"], decoder=dec, vae_decoder=tiny
    )
    passes = []
    pipe.codec.autoencoder.decoder.unets["shared"].register_forward_hook(
        lambda *a: passes.append(1)
    )
    out = pipe.generate("svg", 1, seed=0)
    assert len(passes) == 2 and out.frames.shape[1] == pipe.cfg.data.num_frames
    assert out.settings["decoder_sampler"] == "few_step" and out.settings["decoder_steps"] == 2
    assert pipe.codec.decoding_vae is pipe.codec.vae_decoder is not None
    args = ["sample", "--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    args += ["--decoder", str(dec), "--vae-decoder", str(tiny), "--decoder-steps", "1"]
    assert main([*args, "--task", "svg", "--num", "1", "--out", str(tmp_path / "s"), "-q"]) == 0
    record = json.loads((tmp_path / "s" / "svg.json").read_text())["samples"][0]
    assert record["settings"]["decoder_steps"] == 1
    assert probe(tmp_path / "s" / record["file"]).has_audio
    # exported with the model, both decode by default (their fingerprints follow the export)
    args = ["export", "--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    args += ["--decoder", str(dec), "--vae-decoder", str(tiny), "--out", str(tmp_path / "m")]
    assert main([*args, "-q"]) == 0
    shipped = MMLDMPipeline.from_pretrained(tmp_path / "m")
    assert shipped.codec.cfg.sample.decoder_steps == 2 and shipped.codec.vae_decoder is not None
    again = shipped("svg", 1, seed=0)
    assert torch.allclose(again.frames, out.frames, atol=1e-6)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "| decoder | distilled signal decoder, 2 few_step steps" in card
    assert "| vae_decoder | distilled tiny VAE decoder, one pass" in card
    # a teacher (distill-*, cache-latents --model) loads the folder without its distilled parts
    from mmldm.codec import Codec

    own = Codec.load(tmp_path / "m" / "autoencoder", folder_decoders=False)
    assert own.cfg.sample == load_checkpoint(trained["ae"]).config.sample
    assert own.vae_decoder is None
    # and sample can decode with the full decoder instead (--no-distilled)
    sample = ["sample", "--model", str(tmp_path / "m"), "--task", "svg", "--num", "1", "-q"]
    for flags, sampler in (([], "few_step"), (["--no-distilled"], "ddim")):
        out = tmp_path / f"full{len(flags)}"
        assert main([*sample, "--out", str(out), "--steps", "1", *flags]) == 0
        record = json.loads((out / "svg.json").read_text())["samples"][0]["settings"]
        assert record["decoder_sampler"] == sampler


# --------------------------------------------------------------------------------------------
# batches of conditions (mmldm.batch, `mmldm sample --audio/--video FOLDER|MANIFEST`)
# --------------------------------------------------------------------------------------------


def _sample(trained, *args):
    base = ["sample", "--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    return main([*base, "--steps", "2", "-q", *args])


def test_per_sample_generators_make_outputs_independent_of_the_batch(pipe):
    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = pipe.generate("svg", 2, generator=gens(5, 6), num_inference_steps=2)
    alone = pipe.generate("svg", 1, generator=gens(6), num_inference_steps=2)
    assert torch.allclose(both.frames[1], alone.frames[0], atol=1e-4)
    # 64 Griffin-Lim iterations amplify the last-bit differences of batched matmuls
    assert torch.allclose(both.audio[1], alone.audio[0], atol=2e-3)
    assert both.seeds == [5, 6] and not torch.allclose(both.frames[0], both.frames[1])


def test_sample_a_folder_of_conditions_once_and_skip_it_on_a_rerun(trained, tmp_path, capsys):
    """Every video below the folder is a condition; outputs are named after them, the JSON maps
    each to its condition and seed; a broken file fails alone; a re-run skips what exists."""
    clips = tmp_path / "clips"
    for video in sorted(trained["synth"].rglob("*.mp4"))[:2]:
        (clips / video.parent.name).mkdir(parents=True, exist_ok=True)
        (clips / video.parent.name / video.name).write_bytes(video.read_bytes())
    (clips / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "v2a"
    assert _sample(trained, "--task", "v2a", "--video", str(clips), "--out", str(out)) == 1
    assert "1 of 3 conditions failed" in capsys.readouterr().err
    record = json.loads((out / "v2a.json").read_text())
    assert len(record["failures"]) == 1 and "broken.mp4" in record["failures"][0]
    files = sorted(r["file"] for r in record["samples"])
    expected = sorted(f"{p.relative_to(clips).with_suffix('').as_posix()}_00.mp4"
                      for p in clips.rglob("*.mp4") if p.name != "broken.mp4")  # fmt: skip
    assert files == expected
    assert sorted(r["seed"] for r in record["samples"]) == [0, 1]  # one seed per output
    for r in record["samples"]:
        assert Path(r["condition"]).is_file() and (out / r["file"]).is_file()
        assert probe(out / r["file"]).has_audio
    stamps = {f: (out / f).stat().st_mtime_ns for f in files}
    assert _sample(trained, "--task", "v2a", "--video", str(clips), "--out", str(out)) == 1
    assert {f: (out / f).stat().st_mtime_ns for f in files} == stamps  # skipped
    assert len(json.loads((out / "v2a.json").read_text())["samples"]) == 2
    args = ["--task", "v2a", "--video", str(clips), "--out", str(out), "--overwrite"]
    assert _sample(trained, *args) == 1
    assert all((out / f).stat().st_mtime_ns != stamps[f] for f in files)


def test_sample_a_manifest_and_report_what_cannot_be_read(trained, tmp_path, capsys):
    """A manifest row that points nowhere and an audio-only file given as a video each fail
    with their name; the good row is written; a folder without media stops before loading."""
    video = next(trained["synth"].rglob("*.mp4"))
    wav = tmp_path / "tone.wav"
    from mmldm.data.media import write_wav

    write_wav(wav, np.zeros(16000, dtype=np.float32), 16000)
    manifest = tmp_path / "conditions.csv"
    manifest.write_text(f"path,start\n{video},0\nnowhere.mp4,0\n{wav},0\n")
    out = tmp_path / "a2v"
    assert _sample(trained, "--task", "v2a", "--video", str(manifest), "--out", str(out)) == 1
    record = json.loads((out / "v2a.json").read_text())
    assert [r["file"] for r in record["samples"]] == [f"{video.stem}_00.mp4"]
    failures = " | ".join(record["failures"])
    assert "nowhere.mp4" in failures and "tone.wav" in failures and "video" in failures
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _sample(trained, "--task", "a2v", "--audio", str(empty), "--out", str(out)) == 1
    assert "no audio files in this folder" in capsys.readouterr().err


def test_condition_names_never_collide(tmp_path):
    """Outputs are named after their condition, relative to the folder or manifest; names
    that would repeat (one stem, two extensions; one file at two starts) are numbered."""
    from mmldm.batch import find_conditions

    for rel in ("dogs/bark.wav", "dogs/bark.mp4", "cats/meow.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    names = [c.name for c in find_conditions(tmp_path, "audio")]
    assert sorted(names) == ["cats/meow", "dogs/bark_1", "dogs/bark_2"]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,start\ncats/meow.wav,0\ncats/meow.wav,2\ndogs/bark.wav,0\n")
    conditions = find_conditions(manifest, "audio")
    assert [c.name for c in conditions] == ["cats/meow_1", "cats/meow_2", "dogs/bark"]
    assert [c.start for c in conditions] == [0.0, 2.0, 0.0]


# --------------------------------------------------------------------------------------------
# diffusers conventions, model folders (mmldm export, --model)
# --------------------------------------------------------------------------------------------


def test_pipeline_call_follows_diffusers_conventions(pipe):
    """Output types agree, return_dict=False is (frames, audio), the step callback sees every
    DiT step and what it returns replaces the latents, .to() casts every network."""
    g = torch.Generator().manual_seed(0)
    pt = pipe("svg", 2, num_inference_steps=3, generator=g)
    g = torch.Generator().manual_seed(0)
    np_out = pipe("svg", 2, num_inference_steps=3, generator=g, output_type="np")
    assert pt.frames.min() >= 0 and pt.frames.max() <= 1  # diffusers' range
    np.testing.assert_array_equal(np_out.frames, pt.frames.permute(0, 1, 3, 4, 2).numpy())
    np.testing.assert_array_equal(np_out.audio, pt.audio.numpy())
    assert pt["fps"] == pt.fps == pipe.cfg.data.fps and pt.sample_rate == 16000
    frames, audio = pipe("svg", 2, num_inference_steps=3, seed=0, return_dict=False)
    assert torch.equal(frames, pt.frames) and torch.equal(audio, pt.audio)
    seen = []

    def record(p, i, t, kw):
        seen.append((p is pipe, i, t, tuple(kw["latents"].shape), kw["clip"]))
        return {}

    again = pipe("svg", 2, num_inference_steps=3, seed=0, callback_on_step_end=record)
    assert torch.equal(again.frames, pt.frames)  # a callback that returns nothing changes nothing
    size = int(np.prod(pipe.cfg.audio_latent_shape)) + int(np.prod(pipe.cfg.video_latent_shape))
    assert [s[1] for s in seen] == [0, 1, 2] and all(s[0] and s[3] == (2, size) for s in seen)
    assert [s[2] for s in seen] == sorted((s[2] for s in seen), reverse=True)

    def same(p, i, t, kw):
        return {"latents": kw["latents"].clone()}

    def zero_last(p, i, t, kw):
        return {"latents": torch.zeros_like(kw["latents"])} if i == 2 else {}

    kept = pipe("svg", 2, num_inference_steps=3, seed=0, callback_on_step_end=same)
    zeroed = pipe("svg", 2, num_inference_steps=3, seed=0, callback_on_step_end=zero_last)
    assert torch.equal(kept.frames, pt.frames) and not torch.allclose(zeroed.frames, pt.frames)
    pipe.to(torch.bfloat16)
    try:
        assert pipe.dtype == torch.bfloat16 and pipe.codec.vae.dtype == torch.bfloat16
        assert next(pipe.codec.autoencoder.parameters()).dtype == torch.bfloat16
    finally:
        pipe.to("cpu", torch.float32)
    assert pipe.dtype == torch.float32


def _hifigan(folder, sample_rate):
    """A tiny random HiFi-GAN in the release's layout, at the data's rate."""
    import dataclasses

    from test_vocoder import (
        release_state_dict,
        tiny_config,
        weight_normed_original,
        write_release_folder,
    )

    config = dataclasses.replace(tiny_config("2"), sampling_rate=sample_rate)
    write_release_folder(folder, config, release_state_dict(weight_normed_original(config)))
    return folder


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    """The trained runs exported as one model folder, with a HiFi-GAN and a score report."""
    root = tmp_path_factory.mktemp("model")
    vocoder = _hifigan(root / "hifigan", 16000)
    report = {
        "metrics": {"FVD": {"value": 123.4, "extractor": "i3d", "real_clips": 8, "fake_clips": 8}},
        "missing": [{"metric": "FAD", "needs": "--vggish"}],
        "settings": {"real_clips": 8, "fake_clips": 8},
    }
    (root / "report.json").write_text(json.dumps(report))
    out = root / "synth-tiny"
    args = ["export", "--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    args += ["--vocoder", str(vocoder), "--scores", str(root / "report.json"), "--out", str(out)]
    assert main([*args, "-q"]) == 0
    assert main([*args, "-q"]) == 1  # exists: refused without --overwrite
    assert main([*args, "-q", "--overwrite"]) == 0
    return out


def test_export_writes_a_self_contained_diffusers_style_folder(model, trained):
    from diffusers import AutoencoderKL
    from safetensors import safe_open

    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "MMLDMPipeline" and index["vae"] == [
        "diffusers",
        "AutoencoderKL",
    ]
    assert index["decoder"] == [None, None]
    for part in ("generator", "autoencoder", "vae", "vocoder"):
        assert (model / part / "config.json").is_file() and list(
            (model / part).glob("*.safetensors")
        )
    # inference weights only: the generator's EMA as its "dit", no discriminator, no optimizer
    with safe_open(str(model / "generator" / "model.safetensors"), "pt") as fh:
        assert {k.split(".")[0] for k in fh.keys()} == {"dit", "latent_stats"}
    ema = load_checkpoint(trained["gen"]).state_dict("ema")
    exported = load_checkpoint(model / "generator").state_dict("dit")
    assert all(torch.equal(ema[k], exported[k]) for k in ema)
    with safe_open(str(model / "autoencoder" / "model.safetensors"), "pt") as fh:
        assert {k.split(".")[0] for k in fh.keys()} == {"autoencoder"}
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", local_files_only=True)
    assert vae.config.latent_channels == 4  # diffusers reads the VAE without mmldm
    card = (model / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mmldm")
    for text in ("## Training data", "`" + str(trained["synth"]) + "`", "00_red", "| FVD | 123.4",
                 "| FAD | not computed", "## Intended use", "HiFi-GAN", "| 2 |"):  # fmt: skip
        assert text in card, text


def test_model_folder_loads_as_the_runs_do(model, trained, pipe):
    """from_pretrained(folder) samples what the runs sample (with the shipped HiFi-GAN as the
    runs' vocoder), and a config.json edited by hand is refused by name."""
    folder = MMLDMPipeline.from_pretrained(model)
    runs = MMLDMPipeline.from_pretrained(
        trained["gen"], autoencoder=trained["ae"], vocoder=model / "vocoder"
    )
    assert folder.codec.get_vocoder().kind == "hifigan"
    assert str(folder.codec.vocoder.source).startswith(str(model / "vocoder"))
    other = _hifigan(model.parent / "other_hifigan", 16000)  # --set vocoder.path beats it
    chosen = MMLDMPipeline.from_pretrained(model, overrides=[f"vocoder.path={other}"])
    assert str(chosen.codec.vocoder.source).startswith(str(other))
    a = folder("a2v", 2, audio=torch.zeros(6400), num_inference_steps=2, seed=1)
    b = runs("a2v", 2, audio=torch.zeros(6400), num_inference_steps=2, seed=1)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.audio, b.audio)
    broken = model.parent / "edited"
    import shutil

    shutil.copytree(model, broken)
    config = json.loads((broken / "generator" / "config.json").read_text())
    config["sample"]["steps"] = 7
    (broken / "generator" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="differs from the config stored"):
        MMLDMPipeline.from_pretrained(broken)
    with pytest.raises(CheckpointError, match="not an mmldm model folder"):
        MMLDMPipeline.from_pretrained(trained["gen"])


def test_every_command_takes_the_model_folder(model, trained, tmp_path, capsys):
    source = next(trained["synth"].rglob("*.mp4"))
    out = tmp_path / "a2v"
    base = ["sample", "--model", str(model), "--task", "a2v", "--audio", str(source)]
    assert main([*base, "--steps", "2", "--out", str(out), "-q"]) == 0
    record = json.loads((out / "a2v.json").read_text())
    assert record["model"] == str(model) and probe(out / record["samples"][0]["file"]).has_audio
    recon = tmp_path / "recon.mp4"
    args = ["reconstruct", "--model", str(model), "--input", str(source), "--out", str(recon)]
    assert main([*args, "--decoder-steps", "2", "-q"]) == 0 and probe(recon).has_audio
    latents = tmp_path / "latents"
    args = ["cache-latents", "--model", str(model), "--data", str(trained["synth"])]
    assert main([*args, "--out", str(latents), "-q"]) == 0
    assert LatentDataset(latents).z_a.shape[0] == 12
    assert main([*base, "--generator", str(trained["gen"]), "--out", str(out), "-q"]) == 2
    assert "--model replaces --generator" in capsys.readouterr().err
    assert main(["sample", "--task", "svg", "--out", str(out), "-q"]) == 2
    assert "give --model MODEL, or --generator RUN and --autoencoder RUN" in capsys.readouterr().err


def test_set_changes_a_trained_models_runtime_settings_only(trained, tmp_path, capsys):
    """``--set`` on sample, reconstruct and cache-latents: sampling settings, the vocoder and
    data loader processes change; keys that shape the networks or the signals are refused."""
    out = tmp_path / "s"
    runs = ["--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    sample = ["sample", *runs, "--task", "svg", "--num", "1", "--out", str(out), "-q"]
    assert main([*sample, "--set", "sample.steps=2", "--set", "sample.decoder_steps=1"]) == 0
    settings = json.loads((out / "svg.json").read_text())["samples"][0]["settings"]
    assert settings["steps"] == 2 and settings["decoder_steps"] == 1  # the presets say 5 / 5
    video = next(Path(trained["synth"]).rglob("*.mp4"))
    recon = ["reconstruct", "--autoencoder", str(trained["ae"]), "--input", str(video), "-q"]
    assert main([*recon, "--out", str(tmp_path / "r.mp4"), "--set", "sample.decoder_steps=1"]) == 0
    assert probe(tmp_path / "r.mp4").has_audio
    capsys.readouterr()
    for argv in (
        ["sample", "--generator", str(trained["gen"]), "--task", "svg", "--set", "dit.depth=3"],
        [*recon[:-1], "--set", "data.fps=5"],
    ):
        assert main([*argv, "--autoencoder", str(trained["ae"]), "--out", str(tmp_path / "x"),
                     "-q"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert "a trained model keeps its architecture" in err and err.count("\n") == 1
    # decoder processes read the clips for cache-latents: the same cache as without them
    cache = ["cache-latents", "--autoencoder", str(trained["ae"]), "--data", str(trained["synth"])]
    cache += ["--shard-size", "5", "--out", str(tmp_path / "lat"), "--set", "data.num_workers=2"]
    assert main([*cache, "-q"]) == 0
    for k in range(3):
        ours = load_file(tmp_path / "lat" / shard_name(k))
        theirs = load_file(trained["latents"] / shard_name(k))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_cache_latents_loader_errors_stay_one_line():
    """A clip that fails to decode in a loader process: torch puts that process's traceback
    into the message; the error reaches the command line as its own one line again."""
    from torch.utils.data import DataLoader

    from mmldm.data.cache_latents import _as_list, _rethrown
    from mmldm.data.dataset import DatasetError

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DatasetError("data/clip.mp4: truncated: 3 of 16 frames")

    for workers in (0, 1):
        loader = DataLoader(Broken(), batch_size=1, num_workers=workers, collate_fn=_as_list)
        with pytest.raises(DatasetError) as err:
            list(_rethrown(loader))
        assert str(err.value) == "data/clip.mp4: truncated: 3 of 16 frames"
