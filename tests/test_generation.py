"""Stage 2 end to end on synthetic data: latent cache, generator training, every task."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmldm.checkpoint import CheckpointError, load_checkpoint
from mmldm.cli import main
from mmldm.config import load_config
from mmldm.data.latents import LatentCacheError, LatentDataset, shard_name
from mmldm.data.media import probe, read_media
from mmldm.pipeline import MMLDMPipeline
from mmldm.synthetic.families import synthesize_dataset

TINY = ["--config", "tiny", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    synth = root / "synth"
    synthesize_dataset(synth, 6, seed=1, data=load_config("tiny").data)  # 0.8 s: 2 clips each
    ae = root / "ae"
    assert (
        main(
            [
                "train-autoencoder",
                "--data",
                str(synth),
                "--out",
                str(ae),
                "--max-steps",
                "1",
                "--set",
                "train.sample_every=100",
                *TINY,
            ]
        )
        == 0
    )
    latents = root / "latents"
    assert (
        main(
            [
                "cache-latents",
                "--autoencoder",
                str(ae),
                "--data",
                str(synth),
                "--out",
                str(latents),
                "--shard-size",
                "5",
                "-q",
            ]
        )
        == 0
    )
    gen = root / "gen"
    assert (
        main(
            [
                "train-generator",
                "--latents",
                str(latents),
                "--out",
                str(gen),
                "--long",
                "--max-steps",
                "2",
                *TINY,
            ]
        )
        == 0
    )
    return {"synth": synth, "ae": ae, "latents": latents, "gen": gen, "root": root}


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
        MMLDMPipeline.from_pretrained(trained["gen"], other)


def test_generator_checkpoint(trained):
    ckpt = load_checkpoint(trained["gen"], kind="generator")
    assert set(ckpt.modules) == {"dit", "ema", "latent_stats"}
    assert ckpt.config.dit.long and ckpt.step == 2
    samples = trained["gen"] / "samples" / "step_00000002"  # written while training
    assert probe(samples / "svg_0000.mp4").has_audio and list(samples.glob("svg_sheet_*.png"))


@pytest.fixture(scope="module")
def pipe(trained):
    return MMLDMPipeline.from_pretrained(trained["gen"], trained["ae"])


def test_same_seed_same_output(pipe):
    a = pipe.generate("svg", 2, seed=3, steps=3)
    b = pipe.generate("svg", 2, seed=3, steps=3)
    c = pipe.generate("svg", 2, seed=4, steps=3)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.wave, b.wave)
    assert not torch.equal(a.frames, c.frames)


def test_conditional_tasks_keep_the_given_modality(pipe):
    cfg = pipe.cfg
    n = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    audio = torch.sin(torch.arange(n) / 16000 * 2 * torch.pi * 440) * 0.3
    out = pipe.generate("a2v", 2, audio=audio, steps=3)
    assert torch.equal(out.wave, audio.expand(2, -1))
    assert out.frames.shape == (2, cfg.data.num_frames, 3, 32, 32)
    video = torch.rand(cfg.data.num_frames, 3, 32, 32) * 2 - 1
    out = pipe.generate("v2a", 1, video=video, steps=3)
    assert torch.equal(out.frames[0], video) and out.wave.shape == (1, n)


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


def test_sample_needs_its_condition(trained, tmp_path, capsys):
    with pytest.raises(SystemExit, match="needs --audio"):
        main(
            [
                "sample",
                "--generator",
                str(trained["gen"]),
                "--autoencoder",
                str(trained["ae"]),
                "--task",
                "a2v",
                "--out",
                str(tmp_path),
                "-q",
            ]
        )


def test_distilled_decoders_in_the_pipeline_and_the_cli(trained, tmp_path):
    """A few-step signal decoder and a tiny VAE decoder of the autoencoder: the pipeline decodes
    with both (2 unguided passes), the sample command takes them, its records say so."""
    dec, tiny = tmp_path / "dec", tmp_path / "tiny"
    common = ["--autoencoder", str(trained["ae"]), "--data", str(trained["synth"]), "-q"]
    common += ["--max-steps", "1", "--set", "train.sample_every=100"]
    assert main(["distill-decoder", *common, "--out", str(dec), "--set", "distill.steps=2"]) == 0
    assert main(["distill-vae", *common, "--out", str(tiny), "--set", "distill.vae_width=8"]) == 0
    pipe = MMLDMPipeline.from_pretrained(
        trained["gen"], trained["ae"], decoder=dec, vae_decoder=tiny
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


# --------------------------------------------------------------------------------------------
# batches of conditions (mmldm.batch, `mmldm sample --audio/--video FOLDER|MANIFEST`)
# --------------------------------------------------------------------------------------------


def _sample(trained, *args):
    base = ["sample", "--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    return main([*base, "--steps", "2", "-q", *args])


def test_per_sample_generators_make_outputs_independent_of_the_batch(pipe):
    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = pipe.generate("svg", 2, generator=gens(5, 6), steps=2)
    alone = pipe.generate("svg", 1, generator=gens(6), steps=2)
    assert torch.allclose(both.frames[1], alone.frames[0], atol=1e-4)
    # 64 Griffin-Lim iterations amplify the last-bit differences of batched matmuls
    assert torch.allclose(both.wave[1], alone.wave[0], atol=2e-3)
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
