import shutil
import subprocess

import numpy as np
import pytest

from media_fixtures import make_video, moving_frames, tone
from mmldm.data.media import MediaError, probe, read_audio, read_media, write_video, write_wav

AAC_FRAME = 1024


@pytest.mark.parametrize(("fps", "size", "sr"), [(10.0, (64, 96), 22050), (25.0, (32, 32), 16000)])
def test_mp4_round_trip(tmp_path, fps, size, sr):
    frames = moving_frames(20, *size)
    wave = tone(20 / fps, sr, 330.0)
    path = write_video(tmp_path / "clip.mp4", frames, fps, wave, sr)
    info = probe(path)
    assert (info.width, info.height) == (size[1], size[0])
    assert info.fps == pytest.approx(fps)
    assert info.num_frames == 20 and info.has_audio and info.audio_rate == sr
    media = read_media(path, sample_rate=sr)
    assert media.frames.shape == (20, *size, 3)
    assert media.fps == pytest.approx(fps)
    np.testing.assert_allclose(media.frame_times, np.arange(20) / fps, atol=1e-3)
    assert abs(len(media.audio) - len(wave)) <= AAC_FRAME
    # lossy codecs: close, not equal; and aligned in time (no shift of the tone)
    assert np.abs(media.frames.astype(float) - frames).mean() < 4.0
    n = min(len(wave), len(media.audio))
    corr = np.corrcoef(media.audio[:n], wave[:n])[0, 1]
    assert corr > 0.98


def test_ffprobe_reports_h264_and_aac(tmp_path):
    if shutil.which("ffprobe") is None:
        pytest.fail("ffprobe (Debian's ffmpeg) is required: make test installs it")
    path = make_video(tmp_path / "clip.mp4")
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,codec_type,pix_fmt",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "h264,video,yuv420p" in out.replace(" ", "")
    assert "aac,audio" in out


def test_float_frames_and_odd_sizes(tmp_path):
    frames = moving_frames(4, 16, 16).astype(np.float32) / 127.5 - 1.0
    path = write_video(tmp_path / "f.mp4", frames, 8.0)
    assert read_media(path, audio=False).frames.shape == (4, 16, 16, 3)
    with pytest.raises(ValueError, match="even sizes"):
        write_video(tmp_path / "odd.mp4", moving_frames(2, 15, 16), 8.0)


def test_span_and_frame_rate_conversion(tmp_path):
    frames = np.zeros((45, 16, 16, 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(45) * 5)[:, None, None]  # frame index in the red channel
    path = write_video(tmp_path / "f30.mp4", frames, 30.0, tone(1.5, 16000), 16000)
    media = read_media(path, sample_rate=16000, start=0.2, duration=1.0, grid_fps=10.0)
    assert media.frames.shape[0] == 10
    np.testing.assert_allclose(media.frame_times, 0.2 + np.arange(10) / 10)
    shown = media.frames[:, 8, 8, 0] / 5.0  # source frame index, up to compression error
    np.testing.assert_allclose(shown, 6 + 3 * np.arange(10), atol=0.8)  # frames at 0.2, 0.3 s
    assert len(media.audio) == 16000


def test_audio_resampled_and_mixed_to_mono(tmp_path):
    import soundfile

    sr = 44100
    t = np.arange(sr) / sr
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 500 * t), 0.4 * np.sin(2 * np.pi * 500 * t)], 1)
    soundfile.write(tmp_path / "s.wav", stereo.astype(np.float32), sr)
    wave = read_audio(tmp_path / "s.wav", 22050)
    assert wave.ndim == 1 and abs(len(wave) - 22050) <= 1
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * 22050 / len(wave) == pytest.approx(500, abs=2)
    assert np.abs(wave).max() == pytest.approx(0.4, abs=0.02)


def test_wav_round_trip(tmp_path):
    wave = tone(0.5, 16000)
    write_wav(tmp_path / "a.wav", wave, 16000)
    back = read_audio(tmp_path / "a.wav", 16000)
    assert len(back) == len(wave)
    np.testing.assert_allclose(back, wave, atol=2 / 32768)


# ---- bad input: one clear error naming the file --------------------------------------------


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(MediaError, match="nope.mp4: file not found"):
        read_media(tmp_path / "nope.mp4", sample_rate=16000)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4: empty file"):
        read_media(tmp_path / "empty.mp4", sample_rate=16000)
    with pytest.raises(MediaError, match="is a folder"):
        read_media(tmp_path, sample_rate=16000)


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(MediaError, match="garbage.mp4: cannot be opened"):
        read_media(path, sample_rate=16000)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9])
def test_truncated_file(tmp_path, keep):
    path = make_video(tmp_path / "full.mp4", seconds=3.0, size=(64, 64))
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(MediaError, match="cut.mp4: .*(truncated|corrupt|cannot be opened)"):
        read_media(cut, sample_rate=16000)


def test_missing_streams(tmp_path):
    silent_video = make_video(tmp_path / "noaudio.mp4", audio=False)
    with pytest.raises(MediaError, match="noaudio.mp4: has no audio stream"):
        read_media(silent_video, sample_rate=16000)
    assert read_media(silent_video, audio=False).frames.shape[0] == 20
    write_wav(tmp_path / "sound.wav", tone(1.0, 16000), 16000)
    with pytest.raises(MediaError, match="sound.wav: has no video stream"):
        read_media(tmp_path / "sound.wav", sample_rate=16000)


def test_zero_length_audio(tmp_path):
    write_wav(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(MediaError, match="zero.wav: the audio stream holds no samples"):
        read_audio(tmp_path / "zero.wav", 16000)


def test_clip_shorter_than_requested(tmp_path):
    path = make_video(tmp_path / "short.mp4", seconds=1.0)
    with pytest.raises(MediaError, match="short.mp4: clip shorter than requested"):
        read_media(path, sample_rate=16000, start=0.5, duration=1.0)
    write_wav(tmp_path / "short.wav", tone(0.5, 16000), 16000)
    with pytest.raises(MediaError, match="short.wav: clip shorter than requested"):
        read_audio(tmp_path / "short.wav", 16000, start=0.0, duration=1.0)
