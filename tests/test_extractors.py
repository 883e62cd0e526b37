"""The FVD / FAD feature extractors, randomly initialised at their real size and saved in the
original file formats, load through the public loaders and give the in-memory features.

The weight-writing helpers are also used by test_evaluate.py.
"""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmldm.checkpoint import CheckpointError
from mmldm.metrics.audioclip import (
    AudioCLIPEmbedder,
    ESResNeXtFBSP,
    blackman_harris,
    frame_signal,
    load_audioclip,
)
from mmldm.metrics.i3d import InceptionI3d, load_i3d, preprocess_videos
from mmldm.metrics.vggish import (
    VGGish,
    load_vggish,
    log_mel,
    resample,
    waveform_to_examples,
)

# --------------------------------------------------------------------------------------------
# Writing random weights in the original formats (shared with test_evaluate.py)
# --------------------------------------------------------------------------------------------


def randomise_(net: nn.Module, seed: int) -> nn.Module:
    """He-initialised convolutions and random BatchNorm statistics, so that signals survive
    the whole depth (PyTorch's default init shrinks them layer by layer)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.num_batches_tracked.fill_(1000)
    return net.eval()


def write_i3d(path: Path, seed: int = 0) -> InceptionI3d:
    """i3d_pretrained_400.pt: a plain state dict of the InceptionI3d port."""
    net = randomise_(InceptionI3d(), seed)
    torch.save(net.state_dict(), path)
    return net


class I3DStandIn(nn.Module):
    """A small module with the call signature of StyleGAN-V's TorchScript I3D."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 400)

    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = False,
        resize: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear")
        features = torch.cat([x.mean(dim=(2, 3, 4)), (x * x).mean(dim=(2, 3, 4))], dim=1)
        logits = self.proj(features)
        return logits if return_features else logits.softmax(dim=-1)


def write_i3d_torchscript(path: Path) -> nn.Module:
    torch.manual_seed(1)
    net = I3DStandIn().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # recent torch deprecates TorchScript
        torch.jit.save(torch.jit.script(net), str(path))
    return net


def write_vggish(path: Path, pca_path: Path | None = None, seed: int = 0):
    """vggish-10086976.pth (features.* / embeddings.*) and, optionally, the PCA file as
    torchvggish ships it (a torch-saved dict of numpy arrays)."""
    torch.manual_seed(seed)
    net = randomise_(VGGish(), seed)
    torch.save(net.state_dict(), path)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    pca = {"pca_eigen_vectors": q * 3.0, "pca_means": rng.standard_normal(128) * 0.1}
    if pca_path is not None:
        torch.save(pca, pca_path)
    return net, pca


NON_AUDIO_KEYS = {  # a few of the CLIP tower entries the real file holds beside audio.*
    "positional_embedding": (77, 512),
    "text_projection": (512, 1024),
    "logit_scale": (),
    "logit_scale_ai": (),
    "logit_scale_at": (),
    "visual.conv1.weight": (32, 3, 3, 3),
    "visual.bn1.running_mean": (32,),
    "transformer.resblocks.0.attn.in_proj_weight": (1536, 512),
    "token_embedding.weight": (49408, 8),
    "ln_final.weight": (512,),
}


def write_audioclip(path: Path, seed: int = 0) -> ESResNeXtFBSP:
    """AudioCLIP-Full-Training.pt: the whole model's state dict, audio branch under audio."""
    net = randomise_(ESResNeXtFBSP(), seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a plausible trained front end: sinc^m windows, detuned bins
        n = net.fbsp.m.numel()
        net.fbsp.m.copy_(0.5 + torch.rand(n, generator=gen))
        net.fbsp.fb.copy_(1.0 + 0.1 * torch.rand(n, generator=gen))
        net.fbsp.fc.add_(0.2 * torch.randn(n, generator=gen))
    state = {f"audio.{k}": v for k, v in net.state_dict().items()}
    state.update({k: torch.randn(shape, generator=gen) for k, shape in NON_AUDIO_KEYS.items()})
    torch.save(state, path)
    return net


class Evil:
    """Pickles to a call of print: a file with code in it."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    files = {
        "i3d": root / "i3d_pretrained_400.pt",
        "i3d_ts": root / "i3d_torchscript.pt",
        "vggish": root / "vggish-10086976.pth",
        "vggish_pca": root / "vggish_pca_params-970ea276.pth",
        "audioclip": root / "AudioCLIP-Full-Training.pt",
    }
    nets = {
        "i3d": write_i3d(files["i3d"]),
        "i3d_ts": write_i3d_torchscript(files["i3d_ts"]),
        "vggish": write_vggish(files["vggish"], files["vggish_pca"]),
        "audioclip": write_audioclip(files["audioclip"]),
    }
    return files, nets


def random_video(batch=1, frames=16, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, size, size, generator=gen) * 2 - 1


def random_audio(batch, seconds, rate, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t * (1 + torch.arange(batch)[:, None] / 7))
    return tone + 0.05 * torch.randn(batch, len(t), generator=gen)


# --------------------------------------------------------------------------------------------
# I3D
# --------------------------------------------------------------------------------------------


def test_i3d_preprocessing_shapes_range_and_padding():
    videos = random_video(2, frames=8, size=48)
    x = preprocess_videos(videos, resolution=64)
    assert x.shape == (2, 3, 16, 224, 224)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, :, 8:], x[:, :, 7:8].expand(-1, -1, 8, -1, -1))  # last frame
    # frames already at the evaluation resolution on 8-bit levels are not changed by step 1
    on_levels = torch.round((random_video(1, 16, 64) + 1) * 127.5) / 127.5 - 1
    torch.testing.assert_close(preprocess_videos(on_levels, 64), preprocess_videos(on_levels))
    wide = torch.zeros(1, 16, 3, 60, 90)
    wide[..., 45:] = 1.0  # right half white: the centre crop keeps both halves
    y = preprocess_videos(wide, resolution=None)
    assert y.shape == (1, 3, 16, 224, 224)
    assert y[0, 0, 0, 100, 10] == pytest.approx(0.0) and y[0, 0, 0, 100, 214] == pytest.approx(1.0)


def test_i3d_state_dict_loads_and_matches_the_in_memory_network(weights):
    files, nets = weights
    net = nets["i3d"]
    assert sum(p.numel() for p in net.parameters()) == 12_697_264
    keys = set(net.state_dict())
    for key in (
        "Conv3d_1a_7x7.conv3d.weight",
        "Conv3d_2c_3x3.bn.running_var",
        "Mixed_3b.b1b.conv3d.weight",
        "Mixed_5c.b3b.bn.bias",
        "logits.conv3d.weight",
        "logits.conv3d.bias",
    ):
        assert key in keys
    extractor = load_i3d(files["i3d"])
    assert extractor.kind == "state_dict" and "I3D" in extractor.name
    video = random_video(1, 16, 64)
    got = extractor(video, resolution=64)
    with torch.no_grad():
        expected = net(preprocess_videos(video, 64))
    assert got.shape == (1, 400)
    assert torch.isfinite(got).all() and got.std() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_i3d_legacy_file_without_batchnorm_counters_loads(weights, tmp_path):
    files, _ = weights
    state = torch.load(files["i3d"], weights_only=True)
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, tmp_path / "old.pt")
    extractor = load_i3d(tmp_path / "old.pt")
    assert extractor.model.logits.conv3d.bias.shape == (400,)


def test_i3d_torchscript_is_detected_and_called_like_stylegan_v(weights):
    files, nets = weights
    extractor = load_i3d(files["i3d_ts"])
    assert extractor.kind == "torchscript" and "TorchScript" in extractor.name
    video = random_video(2, 16, 32, seed=3)
    got = extractor(video, resolution=64)
    with torch.no_grad():
        expected = nets["i3d_ts"](
            preprocess_videos(video, 64), rescale=False, resize=False, return_features=True
        )
    assert got.shape == (2, 400)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_i3d_wrong_keys_or_code_fail_naming_the_file(weights, tmp_path):
    files, _ = weights
    state = torch.load(files["i3d"], weights_only=True)
    state.pop("Mixed_4c.b2b.conv3d.weight")
    state["Mixed_4c.extra"] = torch.zeros(1)
    bad = tmp_path / "wrong_keys.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"wrong_keys\.pt.*Mixed_4c"):
        load_i3d(bad)
    evil = tmp_path / "evil.pt"
    torch.save({"Conv3d_1a_7x7.conv3d.weight": Evil()}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*refused"):
        load_i3d(evil)
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match=r"notes\.pt"):
        load_i3d(text)
    with pytest.raises(CheckpointError, match=r"missing\.pt"):
        load_i3d(tmp_path / "missing.pt")


# --------------------------------------------------------------------------------------------
# VGGish
# --------------------------------------------------------------------------------------------


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """The VGGish front end as the reference mel_features.py computes it (16 kHz input)."""
    win, hop, nfft = 400, 160, 512
    count = 1 + (len(wave) - win) // hop
    frames = np.stack([wave[i * hop : i * hop + win] for i in range(count)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * window, nfft))
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731 (HTK)
    bins_mel = mel(np.linspace(0.0, 8000.0, nfft // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), 64 + 2)
    weights = np.empty((nfft // 2 + 1, 64))
    for i in range(64):
        lo, centre, hi = edges[i : i + 3]
        weights[:, i] = np.maximum(
            0.0, np.minimum((bins_mel - lo) / (centre - lo), (hi - bins_mel) / (hi - centre))
        )
    weights[0, :] = 0.0
    return np.log(spec @ weights + 0.01)


def test_vggish_log_mel_matches_the_reference_front_end():
    wave = random_audio(1, 1.0, 16000, seed=4)[0].double().numpy()
    got = log_mel(torch.from_numpy(wave)[None])[0].numpy()
    expected = reference_log_mel(wave)
    assert got.shape == expected.shape == (98, 64)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    examples = waveform_to_examples(torch.from_numpy(wave)[None], 16000)
    assert examples.shape == (1, 1, 96, 64)
    assert waveform_to_examples(random_audio(2, 2.0, 16000), 16000).shape == (2, 2, 96, 64)


def test_resample_keeps_a_tone_and_its_length():
    rate, new = 22050, 16000
    t = torch.arange(int(1.6 * rate), dtype=torch.float64) / rate
    y = resample(torch.sin(2 * math.pi * 1000 * t)[None], rate, new)
    assert y.shape == (1, int(1.6 * new))
    ref = torch.sin(2 * math.pi * 1000 * torch.arange(y.shape[1], dtype=torch.float64) / new)
    assert (y[0, 100:-100] - ref[100:-100]).abs().max() < 1e-3


def test_vggish_loads_and_matches_the_in_memory_network(weights, tmp_path):
    files, nets = weights
    net, pca = nets["vggish"]
    assert sum(p.numel() for p in net.parameters()) == 72_141_184
    model = load_vggish(files["vggish"], files["vggish_pca"])
    assert model.has_pca
    wave = random_audio(3, 1.6, 16000, seed=5)
    got = model.embed(wave, 16000)
    with torch.no_grad():
        expected = net(waveform_to_examples(wave, 16000).reshape(3, 1, 96, 64))
    assert got.shape == (3, 1, 128)
    assert got.std() > 0
    torch.testing.assert_close(got[:, 0], expected, rtol=1e-4, atol=1e-5)
    # other sample rates are resampled to 16 kHz
    assert model.embed(random_audio(2, 1.6, 22050), 22050).shape == (2, 1, 128)
    # post-processing: PCA, clip to [-2, 2], 8-bit
    post = model.embed(wave, 16000, postprocess=True)[:, 0]
    p = torch.as_tensor(pca["pca_eigen_vectors"], dtype=torch.float32)
    mu = torch.as_tensor(pca["pca_means"], dtype=torch.float32)
    manual = torch.round((((expected - mu) @ p.T).clamp(-2, 2) + 2) * 255 / 4)
    assert torch.equal(post, post.round()) and post.min() >= 0 and post.max() <= 255
    assert (post - manual).abs().max() <= 1  # rounding at .5 may differ by one step
    # the final ReLU of torchvggish on request
    assert model.embed(wave, 16000, final_relu=True).min() >= 0
    # PCA inside the state dict, and the original .npz
    state = torch.load(files["vggish"], weights_only=True)
    state["pca_eigen_vectors"] = torch.as_tensor(pca["pca_eigen_vectors"])
    state["pca_means"] = torch.as_tensor(pca["pca_means"])
    torch.save(state, tmp_path / "with_pca.pth")
    assert load_vggish(tmp_path / "with_pca.pth").has_pca
    np.savez(tmp_path / "vggish_pca_params.npz", **pca)
    assert load_vggish(files["vggish"], tmp_path / "vggish_pca_params.npz").has_pca


def test_vggish_wrong_files_fail_naming_the_file(weights, tmp_path):
    files, nets = weights
    state = {k: torch.zeros(v.shape) for k, v in nets["vggish"][0].state_dict().items()}
    state["embeddings.4.weight"] = torch.zeros(64, 4096)  # a 64-d embedding
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError, match=r"narrow\.pth.*embeddings\.4\.weight"):
        load_vggish(tmp_path / "narrow.pth")
    torch.save({"pca_means": torch.zeros(128)}, tmp_path / "half_pca.pth")
    with pytest.raises(CheckpointError, match=r"half_pca\.pth.*pca_eigen_vectors"):
        load_vggish(files["vggish"], tmp_path / "half_pca.pth")
    torch.save({"features.0.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth.*refused"):
        load_vggish(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth.*refused"):
        load_vggish(files["vggish"], tmp_path / "evil.pth")


# --------------------------------------------------------------------------------------------
# AudioCLIP
# --------------------------------------------------------------------------------------------


def test_audioclip_front_end_pieces():
    w = blackman_harris(1654).double().numpy()
    n = np.arange(1654)
    phase = 2 * np.pi * n / 1654
    ref = 0.35875 - 0.48829 * np.cos(phase) + 0.14128 * np.cos(2 * phase)
    ref -= 0.01168 * np.cos(3 * phase)
    np.testing.assert_allclose(w, ref, atol=1e-6)
    frames = frame_signal(torch.arange(70560.0)[None], 1654, 561)
    # AudioCLIP: 1 + ceil((70560 - 1654) / 561) = 124 frames, 97 zeros split 48 / 49
    assert frames.shape == (1, 124, 1654)
    assert frames[0, 0, 48] == 0 and frames[0, 0, 47] == 0 and frames[0, 0, 49] == 1.0
    assert frames[0, -1, -1] == 0 and frames[0, -1, -50] == 70559.0
    spec = ESResNeXtFBSP().log_power(torch.randn(2, 70560))
    assert spec.shape == (2, 3, 341, 124)


def test_audioclip_loads_and_matches_the_in_memory_network(weights):
    files, nets = weights
    net = nets["audioclip"]
    embedder = load_audioclip(files["audioclip"])
    assert isinstance(embedder, AudioCLIPEmbedder) and "AudioCLIP" in embedder.name
    wave = random_audio(2, 1.0, 16000, seed=6)
    got = embedder.embed(wave, 16000)
    with torch.no_grad():
        expected = net(resample(wave.double(), 16000, 44100).float())
    assert got.shape == (2, 1024)
    assert torch.isfinite(got).all() and got.std() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_audioclip_wrong_files_fail_naming_the_file(weights, tmp_path):
    files, nets = weights
    clip_only = {k: torch.zeros(1) for k in NON_AUDIO_KEYS}
    torch.save(clip_only, tmp_path / "CLIP.pt")
    with pytest.raises(CheckpointError, match=r"CLIP\.pt.*audio\."):
        load_audioclip(tmp_path / "CLIP.pt")
    state = {f"audio.{k}": torch.zeros(v.shape) for k, v in nets["audioclip"].state_dict().items()}
    state.pop("audio.att3.conv_point.weight")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt.*att3\.conv_point\.weight"):
        load_audioclip(tmp_path / "partial.pt")
    torch.save({"audio.fc.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt.*refused"):
        load_audioclip(tmp_path / "evil.pt")
