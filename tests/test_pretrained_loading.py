"""Loading the pretrained parts from local files in their original formats: the KL-VAE
(diffusers folder, original LDM single file, mmldm run) and the Stable Diffusion UNet."""

import re

import pytest
import torch
from safetensors.torch import save_file

from mmldm.checkpoint import CheckpointError
from mmldm.codec import build_vae, decoder_config, load_vae
from mmldm.config import load_config
from mmldm.models.signal_decoder import build_unet
from mmldm.train.autoencoder import load_pretrained_unet


def to_ldm_keys(sd: dict, num_blocks: int) -> dict:
    """diffusers AutoencoderKL names -> the original latent-diffusion names (the inverse of
    diffusers' convert_ldm_vae_checkpoint), written independently for the test."""
    out = {}
    for key, value in sd.items():
        k = key
        k = re.sub(r"down_blocks\.(\d+)\.resnets\.(\d+)", r"down.\1.block.\2", k)
        k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", k)
        k = re.sub(
            r"up_blocks\.(\d+)\.resnets\.(\d+)",
            lambda m: f"up.{num_blocks - 1 - int(m.group(1))}.block.{m.group(2)}",
            k,
        )
        k = re.sub(
            r"up_blocks\.(\d+)\.upsamplers\.0",
            lambda m: f"up.{num_blocks - 1 - int(m.group(1))}.upsample",
            k,
        )
        k = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m.group(1)) + 1}", k)
        k = k.replace("mid_block.attentions.0.group_norm", "mid.attn_1.norm")
        for new, old in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            k = k.replace(f"mid_block.attentions.0.{new}", f"mid.attn_1.{old}")
        k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if "attn_1" in k and k.endswith("weight") and value.dim() == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convs
        out[k] = value
    return out


@pytest.fixture
def cfg():
    return load_config("tiny")


def _same_outputs(a, b):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        za, zb = a.encode(x).latent_dist.mean, b.encode(x).latent_dist.mean
        return torch.allclose(za, zb) and torch.allclose(a.decode(za).sample, b.decode(zb).sample)


def test_vae_from_diffusers_folder(tmp_path, cfg):
    torch.manual_seed(0)
    vae = build_vae(cfg.vae)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    for where in (tmp_path / "pipe", tmp_path / "pipe" / "vae"):
        loaded = load_vae(load_config("tiny", [f"vae.pretrained={where}"]).vae)
        assert _same_outputs(vae, loaded)


def test_a_pretrained_vae_brings_its_latent_scale(tmp_path, cfg):
    """SDXL-style VAEs use another scale than SD 1.x's 0.18215: the loaded VAE's own value
    ends up in the config that later stages store."""
    from mmldm.codec import adopt_vae_scaling

    torch.manual_seed(0)
    vae = build_vae(cfg.vae)
    vae.register_to_config(scaling_factor=0.13025)
    vae.save_pretrained(tmp_path / "vae")
    run_cfg = load_config("tiny", [f"vae.pretrained={tmp_path / 'vae'}"])
    assert run_cfg.vae.scaling_factor == 0.18215
    loaded = load_vae(run_cfg.vae)
    adopted = adopt_vae_scaling(run_cfg, loaded)
    assert adopted.vae.scaling_factor == pytest.approx(0.13025)
    assert adopted.dit == run_cfg.dit and adopted.vae.pretrained == run_cfg.vae.pretrained
    assert adopt_vae_scaling(adopted, loaded) is adopted  # nothing to change


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_vae_from_original_single_file(tmp_path, cfg, fmt):
    torch.manual_seed(0)
    vae = build_vae(cfg.vae)
    ldm = to_ldm_keys(vae.state_dict(), len(cfg.vae.block_out_channels))
    assert "encoder.mid.attn_1.q.weight" in ldm and "decoder.up.0.block.0.conv1.weight" in ldm
    full = {f"first_stage_model.{k}": v for k, v in ldm.items()}  # as in a whole SD checkpoint
    full["model.diffusion_model.x.weight"] = torch.zeros(1)
    path = tmp_path / f"sd.{fmt}"
    if fmt == "ckpt":
        torch.save({"state_dict": full}, path)
    else:
        save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    loaded = load_vae(load_config("tiny", [f"vae.pretrained={path}"]).vae)
    assert _same_outputs(vae, loaded)
    if fmt == "safetensors":  # a file that lacks a tensor of the VAE is refused by name
        del full["first_stage_model.decoder.up.0.block.0.conv1.weight"]
        save_file({k: v.contiguous() for k, v in full.items()}, str(path))
        with pytest.raises(CheckpointError, match=f"{path}: not a complete original KL-VAE"):
            load_vae(load_config("tiny", [f"vae.pretrained={path}"]).vae)


def test_vae_errors_name_the_file(tmp_path, cfg):
    with pytest.raises(CheckpointError, match="VAE weights not found: .*nowhere"):
        load_vae(load_config("tiny", [f"vae.pretrained={tmp_path / 'nowhere'}"]).vae)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="needs config.json"):
        load_vae(load_config("tiny", [f"vae.pretrained={tmp_path / 'empty'}"]).vae)
    torch.manual_seed(0)
    other = build_vae(load_config("tiny", ["vae.latent_channels=8"]).vae)
    other.save_pretrained(tmp_path / "eight")
    with pytest.raises(CheckpointError, match="8 latent channels"):
        load_vae(load_config("tiny", [f"vae.pretrained={tmp_path / 'eight'}"]).vae)


def save_sd_unet(folder, cfg):
    """A "Stable Diffusion" UNet of ``cfg.decoder``'s layout (no class embedding) saved as
    diffusers saves SD's ``unet/`` folder; returns the model."""
    torch.manual_seed(0)
    from diffusers import UNet2DConditionModel

    d = cfg.decoder
    n = len(d.block_out_channels)
    sd_unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=d.layers_per_block,
        block_out_channels=tuple(d.block_out_channels),
        cross_attention_dim=d.cross_attention_dim,
        attention_head_dim=d.attention_heads,
        norm_num_groups=min(32, min(d.block_out_channels)),
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
    )
    sd_unet.save_pretrained(folder / "unet")
    return sd_unet


def test_sd_unet_weights_load_into_the_decoder(tmp_path, cfg):
    sd_unet = save_sd_unet(tmp_path / "sd", cfg)
    ours = build_unet(decoder_config(cfg))
    load_pretrained_unet(ours, tmp_path / "sd")
    for key, value in sd_unet.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    with pytest.raises(CheckpointError, match="decoder.pretrained_unet"):
        load_pretrained_unet(ours, tmp_path)
    wider = build_unet(decoder_config(load_config("tiny", ["decoder.block_out_channels=[32,64]"])))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained_unet(wider, tmp_path / "sd")


# --------------------------------------------------------------------------------------------
# starting weights: a missing SD part is refused, not trained from random weights silently
# --------------------------------------------------------------------------------------------


def _refusal(argv, capsys) -> str:
    from mmldm.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    return err


def test_paper_presets_refuse_to_start_without_the_sd_weights(tmp_path, capsys):
    from mmldm.train.starting_weights import check_starting_weights, sd_unet_layout

    base = ["--config", "paper_landscape", "--data", str(tmp_path / "data"), "-q"]
    err = _refusal(["train-autoencoder", *base, "--out", str(tmp_path / "a")], capsys)
    assert "--vae PATH" in err and "docs/weights.md" in err and "--allow-random-init" in err
    err = _refusal(
        ["train-autoencoder", *base, "--out", str(tmp_path / "b"), "--vae", "sd/vae"], capsys
    )
    assert "--unet PATH" in err and "decoder.pretrained_unet" in err
    err = _refusal(["train-vae", *base, "--out", str(tmp_path / "c")], capsys)
    assert "vae.train_decoder_only=false" in err and "--vae PATH" in err
    assert not any((tmp_path / run / "checkpoints").exists() for run in "abc")

    # what lets each start (the check itself: nothing is built)
    paper = load_config("paper_landscape")
    allowed = load_config("paper_landscape", ["train.allow_random_init=true"])
    given = load_config("paper_aist", ["vae.pretrained=sd/vae", "decoder.pretrained_unet=sd"])
    scratch_vae = load_config("paper_landscape", ["vae.train_decoder_only=false"])
    for cfg, stage in ((allowed, "autoencoder"), (allowed, "vae"), (given, "autoencoder")):
        check_starting_weights(cfg, stage)
    check_starting_weights(scratch_vae, "vae")  # a whole VAE from scratch is asked for
    check_starting_weights(paper, "generator")  # trains on cached latents: no SD part
    # only SD's layout can take SD's UNet: other decoders start from random weights unasked
    assert sd_unet_layout(paper.decoder) and sd_unet_layout(given.decoder)
    assert not sd_unet_layout(load_config("demo").decoder)
    check_starting_weights(load_config("demo", ["vae.pretrained=runs/vae"]), "autoencoder")


def test_unet_flag_starts_the_signal_decoder_from_the_given_weights(tmp_path, trained, cfg):
    from mmldm.cli import main
    from mmldm.codec import Codec

    sd_unet = save_sd_unet(tmp_path / "sd", cfg)
    run = tmp_path / "ae"
    argv = ["train-autoencoder", "--data", str(trained["synth"]), "--out", str(run)]
    argv += ["--unet", str(tmp_path / "sd"), "--max-steps", "1", "--set", "train.sample_every=100"]
    assert main([*argv, "--config", "tiny", "-q"]) == 0
    assert f"pretrained_unet: {tmp_path / 'sd'}" in (run / "config.yaml").read_text()
    (unet,) = Codec.load(run).autoencoder.decoder.unets.values()
    ours = unet.state_dict()
    # one AdamW step of lr 1e-3 moves a weight by about lr at most; random init by far more
    moved = max((ours[k] - v).abs().max().item() for k, v in sd_unet.state_dict().items())
    assert moved < 2.5e-3, moved
