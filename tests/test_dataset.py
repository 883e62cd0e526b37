import json
import logging
import os
import time

import numpy as np
import pytest
import torch

from media_fixtures import make_video, tone
from mmldm.config import load_config
from mmldm.data.clips import clip_starts, hflip, resize_frames
from mmldm.data.dataset import DatasetError, SoundingVideoDataset
from mmldm.data.media import write_video, write_wav


@pytest.fixture
def data():
    # 4 frames at 10 fps (0.4 s clips), 32x32, 16 kHz; 3 classes
    return load_config("tiny", ["data.clip_stride=4", "data.hflip_prob=0.0"]).data


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "landscape"
    for c, name in enumerate(["fire", "rain", "wind"]):
        for i in range(2):
            make_video(root / name / f"v{i}.mp4", seconds=1.0, freq=300 + 200 * c, seed=i)
    return root


def test_clip_starts_sliding_window():
    assert clip_starts(1.0, 4, 10.0, 4) == pytest.approx([0.0, 0.4])
    assert clip_starts(1.0, 4, 10.0, 2) == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert clip_starts(0.35, 4, 10.0, 4) == []
    assert clip_starts(1.6, 16, 10.0, 16) == [0.0]


def test_resize_modes():
    frames = np.zeros((1, 20, 40, 3), np.uint8)
    frames[:, :, :20] = 200  # left half bright
    letter = resize_frames(frames, 32, "letterbox")
    assert letter.shape == (1, 32, 32, 3)
    assert letter[0, :7].max() == 0 and letter[0, 25:].max() == 0  # bars top and bottom
    assert letter[0, 16, 2, 0] > 150 and letter[0, 16, 30, 0] < 50
    crop = resize_frames(frames, 32, "center_crop")
    assert crop[0, 0, 2, 0] > 150 and crop[0, 31, 30, 0] < 50 and crop[0].min() == 0
    assert np.array_equal(hflip(crop)[0, :, ::-1], crop[0])


def test_folder_layout_items(folder, data):
    ds = SoundingVideoDataset(folder, data)
    assert ds.classes == ["fire", "rain", "wind"]
    assert len(ds) == 6 * 2  # 1 s videos, 0.4 s clips, stride 0.4 s
    item = ds[3]
    assert item["video"].shape == (4, 3, 32, 32) and item["video"].dtype == torch.float32
    assert -1 <= item["video"].min() and item["video"].max() <= 1
    assert item["audio"].shape == (6400,)
    assert item["label"].item() == ds.classes.index(os.path.basename(os.path.dirname(item["path"])))
    assert item["start"] == pytest.approx(0.4)
    # the audio is the span of the clip: 440-ish Hz tone of its class
    spectrum = np.abs(np.fft.rfft(item["audio"].numpy()))
    freq = np.argmax(spectrum) * 16000 / 6400
    assert freq == pytest.approx(300 + 200 * item["label"].item(), abs=5)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["video"].shape == (4, 4, 3, 32, 32) and batch["label"].shape == (4,)


def test_regex_layout(tmp_path, data):
    for music in ("mBR0", "mPO1"):
        make_video(tmp_path / f"gBR_sBM_c01_d04_{music}_ch01.mp4", seconds=0.5)
    make_video(tmp_path / "unrelated.mp4", seconds=0.5)
    cfg = load_config("tiny", ["data.layout=regex", "data.class_regex=_(?P<label>m[A-Z]{2}[0-9])_"])
    ds = SoundingVideoDataset(tmp_path, cfg.data)
    assert ds.classes == ["mBR0", "mPO1"] and len(ds.videos) == 2


def test_manifest_csv_and_jsonl(tmp_path, data):
    make_video(tmp_path / "a.mp4", seconds=2.0)
    make_video(tmp_path / "b.mp4", seconds=2.0)
    (tmp_path / "list.csv").write_text("path,label,start,end\na.mp4,rain,0.5,1.5\nb.mp4,fire,,\n")
    ds = SoundingVideoDataset(tmp_path / "list.csv", data)
    assert ds.classes == ["fire", "rain"]
    starts_a = [c.start for c in ds.clips if c.video == 0]
    assert starts_a == pytest.approx([0.5, 0.9])  # only inside [0.5, 1.5)
    assert sum(c.video == 1 for c in ds.clips) == 5
    lines = [{"path": str(tmp_path / "a.mp4"), "label": "x"}, {"path": "b.mp4", "class": "y"}]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ds = SoundingVideoDataset(tmp_path / "list.jsonl", data)
    assert ds.classes == ["x", "y"] and len(ds) == 10
    (tmp_path / "bad.csv").write_text("path,label,start,end\na.mp4,rain,2,1\n")
    with pytest.raises(DatasetError, match="bad.csv: entry 1 ends before it starts"):
        SoundingVideoDataset(tmp_path / "bad.csv", data)


def test_fixed_class_list_and_too_many_classes(folder, data):
    cfg = load_config("tiny", ["data.classes=[wind, rain, fire]"])
    assert SoundingVideoDataset(folder, cfg.data).classes == ["wind", "rain", "fire"]
    cfg = load_config("tiny", ["data.num_classes=2"])
    with pytest.raises(DatasetError, match="found 3 classes .*num_classes=2"):
        SoundingVideoDataset(folder, cfg.data)


def test_flip_augmentation(folder):
    cfg = load_config("tiny", ["data.hflip_prob=1.0"])
    plain = SoundingVideoDataset(folder, cfg.data)[0]["video"]
    flipped = SoundingVideoDataset(folder, cfg.data, train=True)[0]["video"]
    assert torch.equal(flipped, plain.flip(-1))


def test_bad_files_are_skipped_and_counted(tmp_path, data, caplog):
    root = tmp_path / "data" / "c"
    make_video(root / "good.mp4", seconds=1.0)
    (root / "garbage.mp4").write_bytes(b"\x00\x01not a video" * 100)
    make_video(root / "noaudio.mp4", audio=False)
    make_video(root / "short.mp4", seconds=0.2)
    full = make_video(tmp_path / "full.mp4", seconds=2.0)
    (root / "truncated.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    write_wav(root / "sound.wav", tone(1.0, 16000), 16000)  # not a video extension: ignored
    with caplog.at_level(logging.WARNING):
        ds = SoundingVideoDataset(tmp_path / "data", data)
    assert [v.path.name for v in ds.videos] == ["good.mp4"]
    problems = {p.name: reason for p, reason in ds.skipped}
    assert set(problems) == {"garbage.mp4", "noaudio.mp4", "short.mp4", "truncated.mp4"}
    assert "no audio stream" in problems["noaudio.mp4"]
    assert "clip shorter than requested" in problems["short.mp4"]
    assert "truncated" in problems["truncated.mp4"]
    assert "skipped 4 of 5 videos" in caplog.text
    assert all(ds[i]["video"].shape == (4, 3, 32, 32) for i in range(len(ds)))


def test_silent_audio_clip_is_replaced_not_returned(tmp_path, data, caplog):
    frames = np.full((10, 32, 32, 3), 90, np.uint8)
    write_video(tmp_path / "c" / "silent.mp4", frames, 10.0, np.zeros(16000, np.float32), 16000)
    make_video(tmp_path / "c" / "ok.mp4", seconds=1.0)
    ds = SoundingVideoDataset(tmp_path, data)
    silent_index = next(
        i for i, c in enumerate(ds.clips) if ds.videos[c.video].path.name == "silent.mp4"
    )
    with caplog.at_level(logging.WARNING):
        item = ds[silent_index]
    assert item["path"].endswith("ok.mp4")
    assert "silent audio" in caplog.text and ds.runtime_skips >= 1


def test_unusable_folders(tmp_path, data):
    with pytest.raises(DatasetError, match="not found"):
        SoundingVideoDataset(tmp_path / "missing", data)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        SoundingVideoDataset(tmp_path / "file.txt", data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no usable clip"):
        SoundingVideoDataset(tmp_path / "empty", data)


def test_cache_gives_the_same_items_and_is_invalidated(folder, data, tmp_path):
    cache = tmp_path / "cache"
    direct = SoundingVideoDataset(folder, data)
    cached = SoundingVideoDataset(folder, data, cache_dir=cache)
    assert cached.preprocess() == 6
    assert cached.preprocess() == 0  # everything valid: nothing re-decoded
    for i in (0, 5, 11):
        a, b = direct[i], cached[i]
        assert torch.equal(a["video"], b["video"])
        torch.testing.assert_close(a["audio"], b["audio"], atol=1e-6, rtol=0)
        assert a["label"] == b["label"]
    # the source changes: its entry is stale, the item is decoded afresh
    target = folder / "fire" / "v0.mp4"
    time.sleep(0.01)
    make_video(target, seconds=1.0, freq=1234.0, seed=9)
    again = SoundingVideoDataset(folder, data, cache_dir=cache)
    index = next(i for i, c in enumerate(again.clips) if again.videos[c.video].path == target)
    assert again._cached(again.clips[index].video) is None
    spectrum = np.abs(np.fft.rfft(again[index]["audio"].numpy()))
    assert np.argmax(spectrum) * 16000 / 6400 == pytest.approx(1234, abs=5)
    assert again.preprocess() == 1
    # a signal setting changes: every entry is stale
    other = load_config("tiny", ["data.clip_stride=4", "data.resolution=64"]).data
    assert SoundingVideoDataset(folder, other, cache_dir=cache).preprocess() == 6


def test_preprocess_command(folder, tmp_path):
    from mmldm.cli import main

    cache = tmp_path / "cache"
    args = ["preprocess", "--data", str(folder), "--cache", str(cache), "--config", "tiny"]
    assert main(args) == 0
    assert len([p for p in cache.iterdir() if (p / "meta.json").is_file()]) == 6
    assert main(["preprocess", "--data", str(tmp_path / "nowhere"), "--cache", str(cache)]) == 1
