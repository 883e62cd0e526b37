import math

import numpy as np
import pytest
import torch

from mmldm.audio.mel import (
    MelSettings,
    audio_image_to_mel,
    hz_to_mel,
    mel_filterbank,
    mel_spectrogram,
    mel_to_audio_image,
    mel_to_hz,
    mel_to_unit,
    resize_matrix,
)

HIFIGAN = MelSettings()  # 22050 Hz, n_fft 1024, hop 256, win 1024, 80 mels, 0-8000 Hz


def reference_mel(wave: np.ndarray, s: MelSettings) -> np.ndarray:
    """HiFi-GAN's definition written independently in float64 numpy, loop by loop."""

    def slaney_mel(f):  # Slaney's auditory toolbox scale
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) * 27 / math.log(6.4)

    def slaney_hz(m):
        return m * 200 / 3 if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    lo, hi = slaney_mel(s.fmin), slaney_mel(s.fmax)
    centres = [slaney_hz(lo + (hi - lo) * i / (s.n_mels + 1)) for i in range(s.n_mels + 2)]
    bins = s.n_fft // 2 + 1
    fb = np.zeros((s.n_mels, bins))
    for m in range(s.n_mels):
        left, mid, right = centres[m], centres[m + 1], centres[m + 2]
        for k in range(bins):
            f = k * s.sample_rate / s.n_fft
            if left < f <= mid:
                fb[m, k] = (f - left) / (mid - left)
            elif mid < f < right:
                fb[m, k] = (right - f) / (right - mid)
        fb[m] *= 2.0 / (right - left)
    pad = (s.n_fft - s.hop_length) // 2
    x = np.pad(wave.astype(np.float64), (pad, pad), mode="reflect")
    n = np.arange(s.win_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / s.win_length)  # periodic Hann
    frames = 1 + (len(x) - s.n_fft) // s.hop_length
    out = np.zeros((s.n_mels, frames))
    for t in range(frames):
        seg = x[t * s.hop_length : t * s.hop_length + s.n_fft] * window
        spec = np.fft.rfft(seg)
        mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
        out[:, t] = np.log(np.maximum(fb @ mag, 1e-5))
    return out


@pytest.mark.parametrize("settings", [HIFIGAN, MelSettings(sample_rate=16000)])
def test_mel_matches_float64_reference(settings):
    rng = np.random.default_rng(0)
    n = int(0.5 * settings.sample_rate)
    t = np.arange(n) / settings.sample_rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n)
    wave = np.clip(wave, -1, 1)
    ref = reference_mel(wave, settings)
    ours = mel_spectrogram(torch.from_numpy(wave).float(), settings).double().numpy()
    assert ours.shape == ref.shape == (settings.n_mels, settings.num_frames(n))
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel < 1e-4
    ours64 = mel_spectrogram(torch.from_numpy(wave), settings).numpy()
    assert np.linalg.norm(ours64 - ref) / np.linalg.norm(ref) < 1e-10


def test_mel_is_batched():
    rng = np.random.default_rng(1)
    waves = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, 3, 8000))).float()
    batched = mel_spectrogram(waves, HIFIGAN)
    assert batched.shape == (2, 3, 80, HIFIGAN.num_frames(8000))
    torch.testing.assert_close(batched[1, 2], mel_spectrogram(waves[1, 2], HIFIGAN))


def test_frame_count_of_paper_clip():
    assert HIFIGAN.num_frames(35280) == 137  # 1.6 s at 22050 Hz


def test_slaney_scale_and_filterbank_closed_forms():
    hz = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-9)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)  # linear part: 200/3 Hz per mel
    assert hz_to_mel(6400.0) == pytest.approx(15.0 + 27.0)  # log part: 27 mels per factor 6.4
    fb = mel_filterbank(HIFIGAN, torch.float64).numpy()
    assert fb.shape == (80, 513) and (fb >= 0).all()
    # Slaney normalisation: every triangle has unit area in Hz (checked where bins are dense)
    bin_hz = HIFIGAN.sample_rate / HIFIGAN.n_fft
    areas = fb.sum(axis=1) * bin_hz
    np.testing.assert_allclose(areas[40:], 1.0, rtol=0.02)
    # no energy above fmax
    assert fb[:, int(np.ceil(8000 / bin_hz)) + 1 :].sum() == 0


def test_mel_rejects_bad_waves():
    with pytest.raises(ValueError, match="in \\[-1, 1\\]"):
        mel_spectrogram(torch.full((4000,), 2.0), HIFIGAN)
    with pytest.raises(ValueError, match="too short"):
        mel_spectrogram(torch.zeros(100), HIFIGAN)


def test_resize_matrix_matches_bilinear():
    import torch.nn.functional as F

    x = torch.rand(2, 1, 80, 137, dtype=torch.float64)
    ours = resize_matrix(80, 256) @ x @ resize_matrix(137, 256).T
    torch_ = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, torch_)
    assert torch.allclose(resize_matrix(256, 80).sum(1), torch.ones(80, dtype=torch.float64))


def _speechlike_mel(seed=0):
    rng = np.random.default_rng(seed)
    n = 35280
    t = np.arange(n) / 22050
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave += 0.02 * rng.standard_normal(n)
    return mel_spectrogram(torch.from_numpy(wave).float(), HIFIGAN)


def test_audio_image_layout_and_range():
    mel = _speechlike_mel()
    image = mel_to_audio_image(mel[None], 256)
    assert image.shape == (1, 3, 256, 256)
    assert image.min() >= -1 and image.max() <= 1
    assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
    # the loudest band (440 Hz is low: near the top rows) is bright
    band = int(mel.mean(1).argmax())
    assert band < 20 and image[0, 0, int((band + 0.5) * 256 / 80)].mean() > 0


def test_audio_image_round_trip_error_is_bounded():
    """mel -> image -> mel: exact up to float error on the image's value range; 8-bit
    quantisation (the paper's PIL image) costs at most half a grey level (0.5 / 255 of the
    100 dB range = 0.196 dB = 0.0226 in natural-log mel)."""
    mel = _speechlike_mel()
    frames = mel.shape[-1]
    floor = (mel_to_unit(mel) > 0) & (mel_to_unit(mel) < 1)  # values inside the image's range
    back = audio_image_to_mel(mel_to_audio_image(mel[None], 256), 80, frames)[0]
    err = (back - mel).abs()[floor]
    assert err.max() < 1e-4
    back8 = audio_image_to_mel(mel_to_audio_image(mel[None], 256, quantize=True), 80, frames)[0]
    err8 = (back8 - mel).abs()[floor]
    half_level = 0.5 / 255 * 100 / 20 * math.log(10)
    assert err8.max() < half_level * 1.05
    assert err8.mean() < half_level * 0.6
    # out-of-range values clip to the range's edges: -100 dB + 20 dB floor
    quiet = torch.full((1, 80, frames), math.log(1e-5))
    assert torch.allclose(
        audio_image_to_mel(mel_to_audio_image(quiet, 64), 80, frames),
        torch.full_like(quiet, -80 / 20 * math.log(10)),
        atol=1e-4,
    )


def test_audio_image_inverse_is_least_squares_on_noisy_images():
    mel = _speechlike_mel(1)
    image = mel_to_audio_image(mel[None], 256)
    noisy = image + 0.05 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    back = audio_image_to_mel(noisy, 80, mel.shape[-1])
    clean = audio_image_to_mel(image, 80, mel.shape[-1])
    # the pseudo-inverse averages the 3.2 x 1.9 image pixels per mel cell: noise shrinks
    noise_in_image_units = 0.05 / 2 * 100 / 20 * math.log(10)
    assert (back - clean).std() < noise_in_image_units / 1.5
