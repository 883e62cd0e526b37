"""HiFi-GAN generator and loader, Griffin-Lim fallback, Vocoder wrapper (CPU, a few seconds)."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from mmldm.audio.griffin_lim import griffin_lim, istft, mel_to_linear, stft
from mmldm.audio.hifigan import (
    PRESETS,
    HiFiGANConfig,
    HiFiGANGenerator,
    fold_weight_norm,
    load_hifigan,
    resolve_hifigan_files,
)
from mmldm.audio.mel import MelSettings, linear_spectrogram, mel_filterbank, mel_spectrogram
from mmldm.audio.vocoder import Vocoder, load_vocoder, load_vocoder_from_config
from mmldm.checkpoint import CheckpointError
from mmldm.config import load_config

SETTINGS = MelSettings()  # 22050 Hz, n_fft 1024, hop 256, 80 mels, 0-8000 Hz (HiFi-GAN V1-V3)


def tiny_config(resblock: str = "1", channels: int = 16) -> HiFiGANConfig:
    """A few thousand parameters, but the release's audio settings (hop 256 = 8 * 8 * 4)."""
    dilations = [[1, 3, 5], [1, 3, 5]] if resblock == "1" else [[1, 2], [2, 6]]
    return HiFiGANConfig(
        resblock=resblock,
        upsample_rates=[8, 8, 4],
        upsample_kernel_sizes=[16, 16, 8],
        upsample_initial_channel=channels,
        resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=dilations,
    )


def weight_normed_original(config: HiFiGANConfig, seed: int = 0) -> nn.Module:
    """A generator laid out like the release: every conv weight-normed (dim=0), random g and v."""
    torch.manual_seed(seed)
    model = HiFiGANGenerator(config)
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            weight_norm(module, name="weight", dim=0)
            param = module.parametrizations.weight
            with torch.no_grad():  # make g differ from ||v|| so that folding really matters
                param.original0.uniform_(0.5, 1.5)
                param.original1.normal_(0.0, 0.05)
                module.bias.normal_(0.0, 0.01)
    return model.eval()


def release_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The release's key names ``<name>.weight_g`` / ``<name>.weight_v`` (old weight_norm)."""
    renamed = {}
    for key, value in model.state_dict().items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        renamed[key] = value.clone()
    return renamed


def write_release_folder(folder, config: HiFiGANConfig, state_dict, name="g_00000001"):
    folder.mkdir(parents=True, exist_ok=True)
    values = config.to_dict()
    # Training-only keys of the release's config.json must be ignored.
    values.update(
        batch_size=16,
        learning_rate=0.0002,
        adam_b1=0.8,
        adam_b2=0.99,
        lr_decay=0.999,
        seed=1234,
        segment_size=8192,
        num_gpus=0,
        num_workers=4,
        fmax_for_loss=None,
        dist_config={"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
    )
    (folder / "config.json").write_text(json.dumps(values))
    torch.save({"generator": state_dict}, folder / name)
    return folder / name


def random_mel(frames: int = 12, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 80, frames, generator=g) * 2.0 - 5.0


# --------------------------------------------------------------------------------------------
# HiFi-GAN: release checkpoints
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_release_checkpoint_loads_and_matches_weight_normed_model(tmp_path, resblock):
    config = tiny_config(resblock)
    original = weight_normed_original(config)
    sd = release_state_dict(original)
    assert any(k.endswith(".weight_g") for k in sd) and any(k.endswith(".weight_v") for k in sd)
    assert not any(k.endswith(".weight") for k in sd)
    assert "ups.0.weight_g" in sd and sd["ups.0.weight_g"].shape == (16, 1, 1)  # [in, 1, 1]
    expected_block = "resblocks.3.convs1.2" if resblock == "1" else "resblocks.3.convs.1"
    assert expected_block + ".weight_v" in sd
    gen_file = write_release_folder(tmp_path / "hifigan", config, sd)

    mel = random_mel()
    with torch.no_grad():
        reference = original(mel)
    assert reference.shape == (2, 12 * 256)

    for path in (tmp_path / "hifigan", gen_file):  # the folder or the generator file
        model, loaded_config = load_hifigan(path)
        assert loaded_config == config and not model.training
        with torch.no_grad():
            wave = model(mel)
        torch.testing.assert_close(wave, reference, rtol=1e-5, atol=1e-6)

    vocoder = load_vocoder(tmp_path / "hifigan", SETTINGS)
    assert vocoder.kind == "hifigan" and vocoder.sample_rate == 22050
    torch.testing.assert_close(vocoder(mel), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vocoder(mel[0]), reference[0], rtol=1e-5, atol=1e-6)  # unbatched
    assert vocoder(mel).abs().max() <= 1.0


def test_fold_weight_norm_matches_torch_for_conv_and_transposed_conv():
    torch.manual_seed(0)
    for module in (nn.Conv1d(6, 4, 5), nn.ConvTranspose1d(6, 4, 8, stride=4)):
        weight_norm(module, dim=0)
        with torch.no_grad():
            module.parametrizations.weight.original0.uniform_(0.5, 2.0)
        sd = {
            "m.weight_g": module.parametrizations.weight.original0.detach(),
            "m.weight_v": module.parametrizations.weight.original1.detach(),
            "m.bias": module.bias.detach(),
        }
        folded = fold_weight_norm(sd)
        assert set(folded) == {"m.weight", "m.bias"}
        torch.testing.assert_close(folded["m.weight"], module.weight.detach())
        # torch's own parametrization names fold the same way
        new_style = {f"m.{k}": v for k, v in module.state_dict().items()}
        torch.testing.assert_close(fold_weight_norm(new_style)["m.weight"], module.weight.detach())
    with pytest.raises(CheckpointError, match="weight_v"):
        fold_weight_norm({"m.weight_g": torch.ones(4, 1, 1)})
    with pytest.raises(CheckpointError, match="expected"):
        fold_weight_norm({"m.weight_g": torch.ones(1, 6, 1), "m.weight_v": torch.ones(4, 6, 5)})


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_plain_weights_load_too(tmp_path, fmt):
    config = tiny_config("2")
    torch.manual_seed(1)
    model = HiFiGANGenerator(config).eval()
    folder = tmp_path / "plain"
    folder.mkdir()
    config.to_json(folder / "config.json")
    if fmt == "pt":
        torch.save({"generator": model.state_dict()}, folder / "generator.pt")
    else:
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "g.safetensors"
        )
    loaded, _ = load_hifigan(folder)
    mel = random_mel(frames=5, batch=1)
    with torch.no_grad():
        assert torch.equal(loaded(mel), model(mel))


# --------------------------------------------------------------------------------------------
# HiFi-GAN: presets and config
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "millions"), [("V1", 13.92), ("V2", 0.92), ("V3", 1.46)]
)  # the paper's table 1
def test_presets_build_with_published_sizes(name, millions):
    config = HiFiGANConfig.preset(name)
    with torch.device("meta"):
        count = sum(p.numel() for p in HiFiGANGenerator(config).parameters())
    assert count / 1e6 == pytest.approx(millions, rel=0.03)
    model = HiFiGANGenerator(config).eval()
    with torch.no_grad():
        wave = model(random_mel(frames=3, batch=1))
    assert wave.shape == (1, 3 * 256) and wave.abs().max() <= 1.0


def test_preset_values():
    v1, v2, v3 = (HiFiGANConfig.preset(n) for n in ("V1", "v2", "V3"))
    assert v1.upsample_rates == [8, 8, 2, 2] and v1.upsample_kernel_sizes == [16, 16, 4, 4]
    assert (v1.upsample_initial_channel, v2.upsample_initial_channel) == (512, 128)
    assert v1.resblock_dilation_sizes == [[1, 3, 5]] * 3 and v1.resblock_kernel_sizes == [3, 7, 11]
    assert (v3.resblock, v3.upsample_rates) == ("2", [8, 8, 4])
    assert v3.upsample_kernel_sizes == [16, 16, 8] and v3.upsample_initial_channel == 256
    assert v3.resblock_dilation_sizes == [[1, 2], [2, 6], [3, 12]]
    for cfg in (v1, v2, v3):
        assert (cfg.num_mels, cfg.n_fft, cfg.hop_size, cfg.win_size) == (80, 1024, 256, 1024)
        assert (cfg.sampling_rate, cfg.fmin, cfg.fmax) == (22050, 0, 8000)
    assert set(PRESETS) == {"V1", "V2", "V3"}
    v1.upsample_rates.append(2)  # presets hand out copies
    assert HiFiGANConfig.preset("V1").upsample_rates == [8, 8, 2, 2]
    with pytest.raises(ValueError, match="V4"):
        HiFiGANConfig.preset("V4")


def test_config_json_round_trip_and_missing_key(tmp_path):
    path = tmp_path / "config.json"
    HiFiGANConfig.preset("V3").to_json(path)
    assert HiFiGANConfig.from_json(path) == HiFiGANConfig.preset("V3")
    values = json.loads(path.read_text())
    del values["upsample_rates"]
    values["learning_rate"] = 2e-4  # ignored
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"config\.json.*upsample_rates"):
        HiFiGANConfig.from_json(path)


# --------------------------------------------------------------------------------------------
# HiFi-GAN: errors
# --------------------------------------------------------------------------------------------


class NotATensor:  # pickled as a reference to code, which torch.load(weights_only=True) refuses
    pass


def test_missing_config_json(tmp_path):
    folder = tmp_path / "no_config"
    folder.mkdir()
    torch.save({"generator": {}}, folder / "g_00000001")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_hifigan(folder)
    with pytest.raises(CheckpointError, match=str(folder / "config.json")):
        load_vocoder(folder / "g_00000001", SETTINGS)


def test_missing_or_ambiguous_generator_file(tmp_path):
    folder = tmp_path / "only_config"
    folder.mkdir()
    tiny_config().to_json(folder / "config.json")
    (folder / "notes.txt").write_text("not weights")
    with pytest.raises(CheckpointError, match=r"no HiFi-GAN generator.*notes\.txt"):
        load_hifigan(folder)
    with pytest.raises(CheckpointError, match="not found"):
        load_hifigan(tmp_path / "does_not_exist")
    with pytest.raises(CheckpointError, match="not found"):
        load_vocoder(tmp_path / "does_not_exist", SETTINGS)

    torch.save({}, folder / "do_00000001")  # the release's discriminator/optimizer file: ignored
    torch.save({}, folder / "g_00000001")
    assert resolve_hifigan_files(folder) == (folder / "config.json", folder / "g_00000001")
    torch.save({}, folder / "g_00000002")
    with pytest.raises(CheckpointError, match="g_00000001, g_00000002"):
        load_hifigan(folder)


def test_pickled_code_is_refused(tmp_path):
    folder = tmp_path / "evil"
    gen_file = write_release_folder(folder, tiny_config(), {"conv_pre.bias": NotATensor()})
    with pytest.raises(CheckpointError, match=rf"{gen_file.name}.*refused"):
        load_hifigan(folder)


def test_wrong_shape_is_reported(tmp_path):
    small = release_state_dict(weight_normed_original(tiny_config("1", channels=8)))
    write_release_folder(tmp_path / "shapes", tiny_config("1", channels=16), small)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*conv_pre"):
        load_hifigan(tmp_path / "shapes")


def test_mismatched_settings_are_refused(tmp_path):
    config = tiny_config()
    write_release_folder(tmp_path / "v", config, release_state_dict(weight_normed_original(config)))
    data_16k = MelSettings(sample_rate=16000)
    with pytest.raises(ValueError, match=r"config\.json.*sampling_rate=22050.*16000") as err:
        load_vocoder(tmp_path / "v", data_16k)
    assert str(tmp_path / "v" / "config.json") in str(err.value)
    with pytest.raises(ValueError, match=r"fmax=8000.*11025"):
        load_vocoder(tmp_path / "v", MelSettings(fmax=11025.0))


def test_load_vocoder_from_config(tmp_path, caplog):
    config = tiny_config("2")
    write_release_folder(tmp_path / "v", config, release_state_dict(weight_normed_original(config)))
    cfg = load_config("paper_landscape")
    cfg.vocoder.path = str(tmp_path / "v")
    assert load_vocoder_from_config(cfg).kind == "hifigan"
    cfg.vocoder.path = None
    with caplog.at_level(logging.WARNING):
        vocoder = load_vocoder_from_config(cfg)
    assert vocoder.kind == "griffin-lim"
    assert vocoder.griffin_lim_iters == cfg.vocoder.griffin_lim_iters


# --------------------------------------------------------------------------------------------
# Griffin-Lim fallback
# --------------------------------------------------------------------------------------------


def test_stft_pair_uses_the_mel_framing():
    wave = torch.rand(2, 5000, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    spec = stft(wave, SETTINGS)
    assert spec.shape == (2, 513, SETTINGS.num_frames(5000))
    torch.testing.assert_close(spec.abs(), linear_spectrogram(wave, SETTINGS), atol=1e-4, rtol=1e-5)
    back = istft(spec, SETTINGS)
    assert back.shape == (2, SETTINGS.num_frames(5000) * 256)
    torch.testing.assert_close(back, wave[:, : back.shape[-1]], atol=1e-5, rtol=0)


def test_mel_to_linear_inverts_the_filterbank():
    g = torch.Generator().manual_seed(0)
    linear = torch.rand(2, 513, 30, generator=g, dtype=torch.float64)
    basis = mel_filterbank(SETTINGS, torch.float64)
    log_mel = torch.log((basis @ linear).clamp(min=1e-5))
    recovered = mel_to_linear(log_mel, SETTINGS)
    assert recovered.shape == linear.shape and recovered.min() >= 0
    again = torch.log((basis @ recovered).clamp(min=1e-5))
    torch.testing.assert_close(again, log_mel, atol=1e-4, rtol=0)


@pytest.mark.parametrize("freq", [440.0, 1000.0])
def test_griffin_lim_recovers_a_tone(freq, caplog):
    n = SETTINGS.sample_rate  # one second
    t = torch.arange(n, dtype=torch.float64) / SETTINGS.sample_rate
    wave = (0.5 * torch.sin(2 * math.pi * freq * t)).float()
    log_mel = mel_spectrogram(wave, SETTINGS).unsqueeze(0)  # [1, 80, T]
    with caplog.at_level(logging.WARNING, logger="mmldm.audio.vocoder"):
        vocoder = load_vocoder(None, SETTINGS)
    assert vocoder.kind == "griffin-lim" and vocoder.sample_rate == 22050
    assert any(
        "Griffin-Lim" in r.message and "vocoder.path" in r.message and r.levelno == logging.WARNING
        for r in caplog.records
    )
    out = vocoder(log_mel)
    assert out.shape == (1, log_mel.shape[-1] * SETTINGS.hop_length)
    assert out.abs().max() <= 1.0 and out.abs().max() > 0.1
    padded = 4 * out.shape[-1]  # zero-padded FFT: 0.25 Hz bins
    spectrum = torch.fft.rfft(out[0] * torch.hann_window(out.shape[-1]), n=padded).abs()
    peak_hz = spectrum.argmax().item() * SETTINGS.sample_rate / padded
    assert abs(peak_hz - freq) < 6.0  # a mel band near 1 kHz is ~70 Hz wide
    torch.testing.assert_close(vocoder(log_mel), out)  # deterministic


def test_griffin_lim_batched_and_errors():
    vocoder = Vocoder(SETTINGS, griffin_lim_iters=4)
    log_mel = random_mel(frames=6, batch=3)
    out = vocoder(log_mel)
    assert out.shape == (3, 6 * 256) and out.dtype == torch.float32
    magnitude = mel_to_linear(log_mel, SETTINGS)
    single = griffin_lim(magnitude[:1], SETTINGS, n_iter=4)
    assert single.shape == (1, 6 * 256)
    with pytest.raises(ValueError, match="80"):
        vocoder(torch.zeros(1, 64, 6))
    with pytest.raises(ValueError, match="too few"):
        griffin_lim(magnitude[..., :1], SETTINGS)


def test_vocoder_to_keeps_working():
    config = tiny_config()
    vocoder = Vocoder(SETTINGS, generator=HiFiGANGenerator(copy.deepcopy(config)))
    assert vocoder.to("cpu") is vocoder and vocoder.device == torch.device("cpu")
    assert vocoder(random_mel(frames=2)).shape == (2, 512)
