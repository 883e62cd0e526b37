"""`mmldm evaluate` and the synthetic-benchmark scores, on real synthetic sounding videos."""

import hashlib
import json
import math
import shutil

import numpy as np
import pytest

from mmldm.cli import main
from mmldm.config import load_config
from mmldm.data.dataset import SoundingVideoDataset
from mmldm.metrics.evaluate import evaluate, format_report
from mmldm.synthetic.families import synthesize_dataset
from mmldm.synthetic.scores import (
    Detections,
    detect_sample,
    label_from_path,
    score_detections,
    shuffled_pairing,
    synthetic_num_classes,
    synthetic_scores,
)
from test_extractors import write_audioclip, write_i3d, write_vggish

K = 4  # classes of the demo config


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """real/: 12 videos of 2 clips (demo config); fake/: 8 videos of one clip each, laid out
    like generated samples with their class (class folders + sidecars); few/: 3 such
    (the networks at their real size are slow on a CPU)."""
    cfg = load_config("demo")
    root = tmp_path_factory.mktemp("synthetic")
    one_clip = cfg.data.clip_seconds
    synthesize_dataset(root / "real", 12, seed=0, data=cfg.data)
    synthesize_dataset(root / "fake", 8, seed=1, data=cfg.data, duration=one_clip)
    synthesize_dataset(root / "few", 3, seed=2, data=cfg.data, duration=one_clip)
    return cfg, root


def test_real_synthetic_data_scores_near_the_ceiling_and_shuffled_pairs_near_chance(synthetic):
    cfg, root = synthetic
    data = cfg.data
    dataset = SoundingVideoDataset(root / "real", data)
    assert len(dataset) == 24
    detections = [
        detect_sample(
            item["video"],
            item["audio"],
            fps=data.fps,
            sample_rate=data.sample_rate,
            num_classes=K,
            label=label_from_path(item["path"], K),
        )
        for item in (dataset[i] for i in range(len(dataset)))
    ]
    assert all(d.label is not None for d in detections)
    scores = synthetic_scores(detections, seed=0)
    real, chance = scores["value"], scores["shuffled"]
    for name in ("video_class_accuracy", "audio_class_accuracy", "av_class_agreement"):
        assert real[name] >= 0.95, (name, real)
        assert chance[name] <= 0.5, (name, chance)  # 1/K = 0.25 expected
    assert real["sync_recall"] >= 0.85 and real["sync_precision"] >= 0.7, real
    assert real["sync_f1"] >= 0.8
    assert chance["sync_f1"] <= real["sync_f1"] - 0.2, (real, chance)


def test_shuffled_pairing_is_a_seeded_derangement():
    for n in (2, 3, 10, 101):
        p = shuffled_pairing(n, seed=n)
        assert sorted(p) == list(range(n))
        assert (p != np.arange(n)).all()
        assert np.array_equal(p, shuffled_pairing(n, seed=n))


def test_scores_count_events_over_samples():
    def det(video, audio, bounces, clicks, label=None):
        return Detections(video, audio, np.asarray(bounces), np.asarray(clicks), 10.0, label)

    dets = [
        det(0, 0, [0.2, 0.5], [0.21, 0.5, 0.9], label=0),  # 2 of 3 clicks matched
        det(1, 2, [0.3], [], label=1),  # a bounce without click
        det(2, 2, [], [], label=None),  # unlabelled: not in the accuracies
    ]
    scores = score_detections(dets)
    assert scores["video_class_accuracy"] == 1.0
    assert scores["audio_class_accuracy"] == 0.5
    assert scores["av_class_agreement"] == pytest.approx(2 / 3)
    assert scores["sync_precision"] == pytest.approx(2 / 3)
    assert scores["sync_recall"] == pytest.approx(2 / 3)
    unlabelled = score_detections([det(0, 0, [], []), det(1, 1, [], [])])
    assert "video_class_accuracy" not in unlabelled and unlabelled["av_class_agreement"] == 1


def test_classes_come_from_sidecars_or_class_folders(synthetic, tmp_path):
    _, root = synthetic
    fake = sorted((root / "fake").rglob("*.mp4"), key=lambda p: p.name)  # clip i: class i % K
    assert [label_from_path(p, K) for p in fake] == [i % K for i in range(8)]
    assert synthetic_num_classes(fake, 0) == K  # from the sidecars
    folder_only = tmp_path / "02_blue" / "sample.mp4"
    folder_only.parent.mkdir()
    shutil.copy(fake[0], folder_only)
    assert label_from_path(folder_only, K) == 2
    assert synthetic_num_classes([folder_only], K) == K
    flat = tmp_path / "sample_7.mp4"
    shutil.copy(fake[0], flat)
    assert label_from_path(flat, K) is None
    assert synthetic_num_classes([flat], K) is None


def test_evaluate_without_weights_reports_synthetic_scores_and_missing_metrics(
    synthetic, tmp_path, capsys
):
    _, root = synthetic
    flat = tmp_path / "generated"  # generated files that carry no class
    flat.mkdir()
    for i, path in enumerate(sorted((root / "fake").rglob("*.mp4"))):
        shutil.copy(path, flat / f"sample_{i}.mp4")
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--real", str(root / "real"), "--fake", str(flat), "--config", "demo"]
    assert main([*argv, "--num", "16", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    needs = {m["metric"]: m["needs"] for m in result["missing"]}
    assert set(needs) == {"FVD", "KVD", "FAD (VGGish)", "FAD (AudioCLIP x1e4)"}
    assert "--i3d" in needs["FVD"] and "--i3d" in needs["KVD"]
    assert "--vggish" in needs["FAD (VGGish)"] and "--audioclip" in needs["FAD (AudioCLIP x1e4)"]
    assert "needs --i3d" in printed and "FAD (AudioCLIP x1e4)" in printed
    assert result["metrics"] == {}
    synthetic_result = result["synthetic"]
    assert synthetic_result["num_classes"] == K
    generated = synthetic_result["generated"]
    assert "video_class_accuracy" not in generated  # no class known: agreement only
    assert generated["av_class_agreement"] >= 0.9
    assert synthetic_result["real"]["video_class_accuracy"] >= 0.95
    settings = result["settings"]
    assert settings["real_clips"] == 16 and settings["real_clips_available"] == 24
    assert settings["fake_clips"] == 8 and settings["config"] == "demo"
    assert settings["mmldm_version"] and settings["extractors"] == {}
    assert "synthetic benchmark" in printed and "av class agreement" in printed


def test_evaluate_with_weights_in_the_original_formats(synthetic, tmp_path, capsys):
    cfg, root = synthetic
    files = {
        "i3d": tmp_path / "i3d_pretrained_400.pt",
        "vggish": tmp_path / "vggish-10086976.pth",
        "vggish-pca": tmp_path / "vggish_pca_params-970ea276.pth",
        "audioclip": tmp_path / "AudioCLIP-Full-Training.pt",
    }
    write_i3d(files["i3d"])
    write_vggish(files["vggish"], files["vggish-pca"])
    write_audioclip(files["audioclip"])
    options = [item for key, path in files.items() for item in (f"--{key}", str(path))]
    few = root / "few"
    out = tmp_path / "self.json"
    argv = ["evaluate", "--real", str(few), "--fake", str(few), "--config", "demo", "-q"]
    argv += [*options, "--num", "3", "--batch-size", "2", "--resolution", "64"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert set(metrics) == {"FVD", "KVD", "FAD (VGGish)", "FAD (AudioCLIP x1e4)"}
    assert result["missing"] == []
    for entry in metrics.values():
        assert math.isfinite(entry["value"]) and entry["real_clips"] == entry["fake_clips"] == 3
    # a folder against itself: the same clips on both sides
    assert metrics["FVD"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["FAD (VGGish)"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["FAD (AudioCLIP x1e4)"]["value"] == pytest.approx(0.0, abs=1e-4)
    for name in ("FAD (VGGish)", "FAD (AudioCLIP x1e4)", "FVD", "KVD", "I3D"):
        assert name in printed
    settings = result["settings"]
    assert settings["resolution"] == 64 and settings["config"] == "demo"
    for key, option in (("i3d", "i3d"), ("vggish", "vggish"), ("audioclip", "audioclip")):
        expected = hashlib.sha256(files[option].read_bytes()).hexdigest()
        assert settings["extractors"][key]["sha256"] == expected
    assert settings["extractors"]["vggish_pca"]["sha256"]

    # real against generated clips: finite, positive distances
    other = evaluate(
        root / "real",
        few,
        cfg=cfg,
        i3d=files["i3d"],
        vggish=files["vggish"],
        num=2,
        resolution=256,
        seed=3,
    )
    assert other["metrics"]["FVD"]["value"] > 0
    assert math.isfinite(other["metrics"]["KVD"]["value"])
    assert other["metrics"]["FAD (VGGish)"]["value"] > 0
    assert [m["metric"] for m in other["missing"]] == ["FAD (AudioCLIP x1e4)"]


def test_evaluate_names_a_generated_file_that_is_too_short(synthetic, tmp_path, capsys):
    cfg, root = synthetic
    synthesize_dataset(tmp_path / "short", 2, seed=5, data=cfg.data, duration=0.5)
    argv = ["evaluate", "--real", str(root / "real"), "--fake", str(tmp_path / "short")]
    assert main([*argv, "--config", "demo", "-q"]) == 1
    err = capsys.readouterr().err
    assert "00000.mp4" in err and "shorter than requested" in err
    assert main([*argv[:-1], str(tmp_path / "nothing"), "--config", "demo", "-q"]) == 1
    assert "not found" in capsys.readouterr().err


def test_evaluate_scores_outputs_against_the_clips_their_records_name(synthetic, tmp_path):
    """A folder of 'reconstructions' (here: copies of the sources, one of them replaced by
    another clip) with a record naming each source: positions and events are compared with
    the source's, and with other sources' for chance."""
    cfg, root = synthetic
    sources = sorted((root / "fake").rglob("*.mp4"))
    out = tmp_path / "recon"
    out.mkdir()
    records = []
    for i, source in enumerate(sources):
        copied = sources[-1] if i == 0 else source  # sample 0 is another class's clip
        shutil.copy(copied, out / f"recon_{i}.mp4")
        records.append({"file": f"recon_{i}.mp4", "condition": str(source)})
    (out / "reconstruction.json").write_text(json.dumps({"samples": records}))
    result = evaluate(root / "real", out, cfg=cfg, num=16)
    synthetic_result = result["synthetic"]
    assert synthetic_result["paired_clips"] == len(sources)
    paired, chance = synthetic_result["paired"], synthetic_result["paired_chance"]
    n = len(sources)
    assert paired["position_within_2px"] == pytest.approx((n - 1) / n, abs=0.02)
    assert paired["video_class_accuracy"] == pytest.approx((n - 1) / n)
    assert paired["video_event_f1"] >= 0.8 and paired["audio_event_f1"] >= 0.8
    assert chance["position_within_2px"] < 0.3
    assert "position within 2px" in format_report(result)
