"""`mmldm demo` end to end on the tiny preset (the pulse family): every stage runs, the
reconstructions and samples are scored in class and in time, and a re-run skips it all."""

from __future__ import annotations

import json

from mmldm.cli import main


def test_demo_end_to_end_on_tiny_config(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--config", "tiny", "--family", "pulse", "-q"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "pulse"
    real = metrics["real"]["value"]
    assert real["video_class_accuracy"] == real["audio_class_accuracy"] == 1.0
    assert real["path_consistency"] == 1.0
    recon = metrics["reconstruction"]
    assert recon["key_frames"] == [0, 1, 2, 3]
    for key in ("position_within_2px", "position_error_px", "video_event_f1", "audio_event_f1"):
        assert key in recon["value"] and key in recon["shuffled"]
    for task in ("svg", "a2v", "v2a"):
        assert {"sync_f1", "path_consistency"} <= set(metrics[task]["value"])
        assert "sync_f1" in metrics[task]["shuffled"]  # following another clip's condition
    records = json.loads((out / "samples/reconstruction/reconstruction.json").read_text())
    assert len(records["samples"]) == 16 and all(r["condition"] for r in records["samples"])
    page = (out / "index.html").read_text()
    assert "pulse family" in page and "swell" in page and "reconstruction" in page
    stamp = (out / "metrics.json").stat().st_mtime
    assert main(argv) == 0  # every stage done: nothing is redone
    assert (out / "metrics.json").stat().st_mtime == stamp
