"""Stage 0-1 training end to end on synthetic data: distributed, killed and resumed, decoded."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, free_port, subprocess_env
from mmldm.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint
from mmldm.cli import main
from mmldm.config import load_config
from mmldm.data.media import probe, read_media
from mmldm.synthetic.families import synthesize_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize_dataset(root, 6, seed=0, data=load_config("tiny").data)
    return root


def _weights(run):
    return load_file(str(resolve_checkpoint(run)))


def test_train_autoencoder_cli_and_reconstruct(synth, tmp_path):
    run = tmp_path / "ae"
    assert (
        main(
            [
                "train-autoencoder",
                "--data",
                str(synth),
                "--out",
                str(run),
                "--max-steps",
                "2",
                *TINY,
            ]
        )
        == 0
    )
    ckpt = load_checkpoint(run, kind="autoencoder")
    assert ckpt.step == 2 and ckpt.modules == ["autoencoder", "discriminator", "vae"]
    assert (run / "loss.png").is_file() and (run / "metrics.jsonl").is_file()
    assert list((run / "logs" / "mmldm-autoencoder").glob("events.out.tfevents.*"))  # trackers
    samples = run / "samples" / "step_00000002"  # reconstructions written while training
    assert (samples / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert probe(samples / "recon_0.mp4").has_audio
    video = next(synth.rglob("*.mp4"))
    out = tmp_path / "recon.mp4"
    assert (
        main(
            [
                "reconstruct",
                "--autoencoder",
                str(run),
                "--input",
                str(video),
                "--out",
                str(out),
                "--steps",
                "3",
                "-q",
            ]
        )
        == 0
    )
    info = probe(out)
    cfg = load_config("tiny")
    assert info.has_video and info.has_audio and info.num_frames == cfg.data.num_frames
    media = read_media(out, sample_rate=cfg.data.sample_rate)
    assert abs(len(media.audio) - cfg.data.clip_seconds * cfg.data.sample_rate) <= 1024
    if shutil.which("ffprobe"):
        codecs = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name",
                "-of",
                "csv=p=0",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert codecs == ["h264", "aac"]


def test_two_process_cpu_run_loads_in_one_process(synth, tmp_path):
    run = tmp_path / "dist"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "mmldm",
        "train-autoencoder",
        "--data",
        str(synth),
        "--out",
        str(run),
        "--max-steps",
        "2",
        "--set",
        "train.autoencoder.batch_size=1",
        *TINY,
    ]
    result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = load_checkpoint(run, kind="autoencoder")
    state = ckpt.training_state()
    assert ckpt.step == 2 and state["world_size"] == 2 and len(state["rng"]) == 2
    from mmldm.codec import Codec

    assert Codec.load(run).cfg == ckpt.config


def _train_cmd(synth, run, resume=False):
    target = (
        ["--resume", str(run)]
        if resume
        else [
            "--data",
            str(synth),
            "--out",
            str(run),
            *TINY,
            "--set",
            "train.checkpoint_every=2",
            "--set",
            "train.autoencoder.max_steps=6",
        ]
    )
    return [sys.executable, "-m", "mmldm", "train-autoencoder", *target]


def test_sigkill_and_resume_matches_uninterrupted_run(synth, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(
        _train_cmd(synth, straight),
        env=subprocess_env(),
        check=True,
        timeout=300,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(synth, killed),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_00000002").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed).step < 6
    subprocess.run(
        _train_cmd(synth, killed, resume=True),
        env=subprocess_env(),
        check=True,
        timeout=300,
        capture_output=True,
    )

    a, b = _weights(straight), _weights(killed)
    assert load_checkpoint(killed).step == 6
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed run continues the killed run's curves without repeating a step
    from mmldm.run import read_metrics

    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_train_vae_from_scratch_and_load(synth, tmp_path):
    from mmldm.codec import load_vae

    run = tmp_path / "vae"
    assert (
        main(
            [
                "train-vae",
                "--data",
                str(synth),
                "--out",
                str(run),
                "--max-steps",
                "2",
                "--set",
                "vae.train_decoder_only=false",
                "--set",
                "vae.disc_weight=0.1",
                "--set",
                "train.checkpoint_every=1",
                *TINY,
            ]
        )
        == 0
    )
    ckpt = load_checkpoint(run, kind="vae")
    assert ckpt.config.vae.scaling_factor != 0.18215  # calibrated on the data
    # every checkpoint carries its own encoder's scale, not only the last one
    (_, first), _ = list_checkpoints(run / "checkpoints")
    first_scale = load_checkpoint(first, kind="vae").config.vae.scaling_factor
    assert first_scale != 0.18215 and first_scale != ckpt.config.vae.scaling_factor
    vae = load_vae(load_config("tiny", [f"vae.pretrained={run}"]).vae)
    assert vae.config.scaling_factor == pytest.approx(ckpt.config.vae.scaling_factor)
    # the autoencoder trains on top of it
    ae_run = tmp_path / "ae"
    assert (
        main(
            [
                "train-autoencoder",
                "--data",
                str(synth),
                "--out",
                str(ae_run),
                "--vae",
                str(run),
                "--max-steps",
                "1",
                *TINY,
            ]
        )
        == 0
    )
    ae_cfg = load_checkpoint(ae_run).config
    assert ae_cfg.vae.pretrained == str(run)
    # the autoencoder's stored config carries the VAE's own scale, so sampling and latent
    # caching (which rebuild the VAE from it) make the latents it was trained on
    assert ae_cfg.vae.scaling_factor == pytest.approx(ckpt.config.vae.scaling_factor)
    from mmldm.codec import Codec
    from mmldm.models.vae import encode

    ae_vae = Codec.load(ae_run).vae
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(
            encode(ae_vae, images, sample=False), encode(vae, images, sample=False), atol=1e-6
        )


def test_decoding_is_batched_seeded_and_solver_agnostic(synth, tmp_path):
    from mmldm.codec import Codec

    run = tmp_path / "ae"
    assert (
        main(
            [
                "train-autoencoder",
                "--data",
                str(synth),
                "--out",
                str(run),
                "--max-steps",
                "1",
                "--set",
                "train.sample_every=100",
                *TINY,
            ]
        )
        == 0
    )
    codec = Codec.load(run)
    cfg = codec.cfg
    z_a = torch.randn(2, *cfg.audio_latent_shape)
    z_v = torch.randn(2, *cfg.video_latent_shape)

    def run_decode(seed, sampler="ddim"):
        g = torch.Generator().manual_seed(seed)
        return codec.decode(z_a, z_v, steps=3, sampler=sampler, generator=g)

    a, b, c = run_decode(0), run_decode(0), run_decode(1)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.wave, b.wave)
    assert not torch.equal(a.frames, c.frames)
    n = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    assert a.frames.shape == (2, cfg.data.num_frames, 3, 32, 32) and a.wave.shape == (2, n)
    assert a.mel.shape[1] == cfg.data.n_mels
    dpm = run_decode(0, "dpm")
    assert dpm.frames.shape == a.frames.shape and torch.isfinite(dpm.frames).all()


def test_train_autoencoder_with_cached_vae_latents(synth, tmp_path):
    """train.cache_vae_latents: the training loop names each clip (path, start) for the
    cache and trains with it (the cache's own behaviour: tests/test_autoencoder.py)."""
    run = tmp_path / "ae_cached"
    argv = ["train-autoencoder", "--data", str(synth), "--out", str(run), "--max-steps", "4"]
    assert main([*argv, *TINY, "--set", "train.cache_vae_latents=true"]) == 0
    assert load_checkpoint(run, kind="autoencoder").step == 4
