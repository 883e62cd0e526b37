"""The few-step decoder: its loss, its training run (resume), loading it for sampling."""

import copy
import json
import subprocess
import sys

import pytest
import torch

from mmldm.checkpoint import CheckpointError, load_checkpoint
from mmldm.cli import main
from mmldm.codec import Codec, tiny_vae_decoder_config, vae_inputs
from mmldm.config import ConfigError, load_config
from mmldm.data.media import probe
from mmldm.synthetic.families import synthesize_dataset
from mmldm.train.distill import distill_config, distill_loss

TINY = ["--config", "tiny", "-q"]


def _train_ae(synth, out, seed=0):
    args = ["train-autoencoder", "--data", str(synth), "--out", str(out), "--max-steps", "1"]
    args += ["--set", "train.sample_every=100", "--set", f"train.seed={seed}", *TINY]
    assert main(args) == 0


@pytest.fixture(scope="module")
def ae(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    synth = root / "synth"
    synthesize_dataset(synth, 6, seed=0, data=load_config("tiny").data)
    _train_ae(synth, root / "ae")
    return {"root": root, "synth": synth, "ae": root / "ae"}


def _distill_cmd(ae, out, *extra):
    return [
        "distill-decoder",
        "--autoencoder",
        str(ae["ae"]),
        "--data",
        str(ae["synth"]),
        "--out",
        str(out),
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.sample_every=100",
        "--set",
        "distill.steps=2",
        *extra,
        "-q",
    ]


@pytest.mark.parametrize("target", ["data", "teacher"])
def test_distillation_loss_falls_on_a_fixed_batch(ae, target):
    codec = Codec.load(ae["ae"])
    teacher, vae, teacher_cfg = codec.autoencoder, codec.vae, codec.cfg
    cfg = distill_config(
        teacher_cfg, [f"distill.target={target}", "distill.steps=2", "distill.teacher_steps=3"]
    )
    student = copy.deepcopy(teacher.decoder).train().requires_grad_(True)
    before = {k: v.clone() for k, v in teacher.decoder.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, cfg.data.num_frames, 3, 32, 32, generator=g) * 2 - 1
    n = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    audio = torch.sin(torch.arange(n) * 0.05)[None].repeat(2, 1) * 0.5
    inputs = vae_inputs(vae, cfg, video, audio, 2, generator=g)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for step in range(30):
        torch.manual_seed(step % 3)  # 3 fixed draws of posterior sample and noise
        loss, logs = distill_loss(student, teacher, inputs, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss"])
        assert set(logs) == {"loss", "loss_mse_audio", "loss_mse_video"}
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses
    # the student is a copy: training it leaves the teacher's decoder as it was
    after = teacher.decoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_distill_config_keeps_the_architecture(ae):
    teacher_cfg = Codec.load(ae["ae"]).cfg
    cfg = distill_config(teacher_cfg, ["distill.steps=3", "train.distill.lr=1e-3"])
    assert (cfg.sample.decoder_sampler, cfg.sample.decoder_steps) == ("few_step", 3)
    assert cfg.sample.decoder_guidance_audio == cfg.sample.decoder_guidance_video == 1.0
    assert cfg.decoder == teacher_cfg.decoder and cfg.train.distill.lr == 1e-3
    with pytest.raises(ConfigError, match="architecture"):
        distill_config(teacher_cfg, ["decoder.layers_per_block=2"])
    with pytest.raises(ConfigError, match="distill.target"):
        distill_config(teacher_cfg, ["distill.target=other"])


def test_distill_run_resumes_exactly_and_samples(ae, tmp_path):
    straight = tmp_path / "straight"
    assert main([*_distill_cmd(ae, straight), "--max-steps", "4"]) == 0
    resumed = tmp_path / "resumed"
    assert main([*_distill_cmd(ae, resumed), "--max-steps", "2"]) == 0
    assert main(["distill-decoder", "--resume", str(resumed), "--max-steps", "4", "-q"]) == 0
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a.kind == b.kind == "distill" and a.step == b.step == 4
    sa, sb = a.state_dict("decoder"), b.state_dict("decoder")
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    teacher = load_checkpoint(ae["ae"]).state_dict("autoencoder")
    assert any(not torch.equal(sa[k], teacher[f"decoder.{k}"]) for k in sa)  # it trained

    # decoding with it: its weights, its sampler (2 passes per latent, no guidance)
    codec = Codec.load(ae["ae"], decoder=straight)
    model, cfg = codec.autoencoder, codec.cfg
    assert (cfg.sample.decoder_sampler, cfg.sample.decoder_steps) == ("few_step", 2)
    own = dict(model.decoder.state_dict())
    assert all(torch.equal(own[k], sa[k]) for k in sa)
    calls = []
    model.decoder.unets["shared"].register_forward_hook(lambda *a: calls.append(a[1][0].shape))
    z_a, z_v = torch.randn(1, *cfg.audio_latent_shape), torch.randn(1, *cfg.video_latent_shape)
    out = codec.decode(z_a, z_v)
    assert len(calls) == 2 and calls[0][0] == 1 + cfg.data.num_frames  # one batch, no null rows
    assert torch.isfinite(out.frames).all()

    # the CLI round trip with it
    clip = next(ae["synth"].rglob("*.mp4"))
    out_mp4 = tmp_path / "recon.mp4"
    args = ["reconstruct", "--autoencoder", str(ae["ae"]), "--decoder", str(straight)]
    assert main([*args, "--input", str(clip), "--out", str(out_mp4), "-q"]) == 0
    assert probe(out_mp4).has_audio


def test_decoder_of_another_autoencoder_is_refused(ae, tmp_path, capsys):
    dec = tmp_path / "dec"
    assert main([*_distill_cmd(ae, dec), "--max-steps", "1"]) == 0
    other = tmp_path / "other_ae"
    _train_ae(ae["synth"], other, seed=1)
    with pytest.raises(CheckpointError, match="distilled from"):
        Codec.load(other, decoder=dec)
    args = ["distill-decoder", "--resume", str(dec), "--autoencoder", str(other), "-q"]
    assert main(args) == 1
    assert "another autoencoder" in capsys.readouterr().err
    stored = json.loads((dec / "data.json").read_text())
    assert stored["autoencoder"] == str(ae["ae"])


def test_cli_help_names_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "mmldm", "distill-decoder", "-h"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "few-step" in out.stdout


def test_tiny_vae_decoder_loss_falls_and_matches_the_vae_shapes(ae):
    from mmldm.models.vae import TinyVAEDecoder
    from mmldm.train.distill import distill_vae_loss

    codec = Codec.load(ae["ae"])
    vae, teacher_cfg = codec.vae, codec.cfg
    cfg = distill_config(teacher_cfg, ["distill.vae_width=8", "distill.vae_depth=1"], "vae")
    assert cfg.sample == teacher_cfg.sample  # no sampling settings change for the VAE part
    tiny = TinyVAEDecoder(**tiny_vae_decoder_config(cfg))
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, cfg.data.num_frames, 3, 32, 32, generator=g) * 2 - 1
    n = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    inputs = vae_inputs(vae, cfg, video, torch.zeros(2, n), 2, generator=g)
    latents = inputs.target_latents.flatten(0, 1)
    assert tiny(latents).shape == (4, 3, 32, 32)  # the KL-VAE's upsampling factor
    opt = torch.optim.Adam(tiny.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, logs = distill_vae_loss(tiny, vae, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss"])
    assert losses[-1] < 0.5 * losses[0], losses


def test_distill_vae_run_decodes_clips(ae, tmp_path):
    run = tmp_path / "tiny"
    args = ["distill-vae", "--autoencoder", str(ae["ae"]), "--data", str(ae["synth"])]
    args += ["--out", str(run), "--max-steps", "2", "--set", "distill.vae_width=8", "-q"]
    assert main(args) == 0
    assert (run / "samples" / "step_00000002" / "grid.png").is_file()
    ckpt = load_checkpoint(run)
    assert ckpt.kind == "distill" and "vae_decoder" in ckpt.modules
    # a signal-decoder run is not a VAE decoder, and the other way round
    with pytest.raises(CheckpointError, match="no module 'decoder'"):
        Codec.load(ae["ae"], decoder=run)
    codec = Codec.load(ae["ae"], vae_decoder=run)
    cfg = codec.cfg
    assert codec.decoding_vae is codec.vae_decoder
    z_a, z_v = torch.randn(1, *cfg.audio_latent_shape), torch.randn(1, *cfg.video_latent_shape)
    out = codec.decode(z_a, z_v, steps=2)
    assert out.frames.shape == (1, cfg.data.num_frames, 3, 32, 32)
    clip = next(ae["synth"].rglob("*.mp4"))
    out_mp4 = tmp_path / "recon.mp4"
    args = ["reconstruct", "--autoencoder", str(ae["ae"]), "--vae-decoder", str(run)]
    assert main([*args, "--input", str(clip), "--out", str(out_mp4), "-q"]) == 0
    assert probe(out_mp4).has_audio
