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


def test_sd_unet_weights_load_into_the_decoder(tmp_path, cfg):
    torch.manual_seed(0)
    from diffusers import UNet2DConditionModel

    d = cfg.decoder
    n = len(d.block_out_channels)
    sd_unet = UNet2DConditionModel(  # a "Stable Diffusion" UNet: no class embedding
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
    sd_unet.save_pretrained(tmp_path / "sd" / "unet")
    ours = build_unet(decoder_config(cfg))
    load_pretrained_unet(ours, tmp_path / "sd")
    for key, value in sd_unet.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    with pytest.raises(CheckpointError, match="decoder.pretrained_unet"):
        load_pretrained_unet(ours, tmp_path)
    wider = build_unet(decoder_config(load_config("tiny", ["decoder.block_out_channels=[32,64]"])))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained_unet(wider, tmp_path / "sd")
