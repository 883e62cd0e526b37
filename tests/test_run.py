import json

import pytest

from mmldm.config import load_config
from mmldm.run import RunLogger, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cfg():
    return load_config("tiny")


def _log_steps(logger, steps):
    for step in steps:
        logger.log(step, {"loss": 1.0 / step, "loss_mse": 0.5 / step, "lr": 1e-3})


def test_run_folder_contents(tmp_path, cfg):
    run = tmp_path / "run"
    with RunLogger(run, cfg, plot_every=2) as logger:
        _log_steps(logger, range(1, 6))
    assert load_config(run / "config.yaml") == cfg
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    for r in records:
        assert set(r) == {"step", "loss", "loss_mse", "lr", "seconds"}
    seconds = [r["seconds"] for r in records]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    assert (run / "loss.png").read_bytes()[:8] == PNG_MAGIC
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_events_hold_the_scalars(tmp_path, cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path / "run", cfg) as logger:
        _log_steps(logger, [1, 2, 3])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"loss", "loss_mse", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert events.Scalars("loss")[1].value == pytest.approx(0.5)


def test_resume_drops_records_after_the_checkpoint(tmp_path, cfg):
    run = tmp_path / "run"
    with RunLogger(run, cfg) as logger:
        _log_steps(logger, range(1, 8))  # killed after step 7; last checkpoint at step 4
    last_kept = read_metrics(run / "metrics.jsonl")[3]["seconds"]
    with RunLogger(run, cfg, resume_step=4) as logger:
        assert logger.elapsed >= last_kept
        _log_steps(logger, [5, 6])
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[4]["seconds"] >= last_kept


def test_torn_last_line_is_skipped(tmp_path, cfg):
    run = tmp_path / "run"
    with RunLogger(run, cfg) as logger:
        _log_steps(logger, [1, 2])
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    with RunLogger(run, cfg, resume_step=2) as logger:
        _log_steps(logger, [3])
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_non_main_process_writes_nothing(tmp_path, cfg):
    with RunLogger(tmp_path / "run", cfg, main_process=False) as logger:
        assert logger.log(1, {"loss": 1.0}) == {}
    assert not (tmp_path / "run").exists()


def test_learning_rate_schedules():
    import math

    from mmldm.config import StageTrainConfig
    from mmldm.train.common import lr_at

    constant = StageTrainConfig(lr=1e-3, max_steps=100, warmup_steps=10)
    assert lr_at(0, constant) == 1e-4 and lr_at(9, constant) == 1e-3 and lr_at(99, constant) == 1e-3
    cosine = StageTrainConfig(lr=1e-3, max_steps=110, warmup_steps=10, lr_schedule="cosine")
    assert lr_at(4, cosine) == lr_at(4, constant)  # the same warm-up
    assert lr_at(10, cosine) == 1e-3  # the top right after it
    assert math.isclose(lr_at(60, cosine), 1e-3 * (0.1 + 0.9 * 0.5))  # halfway
    assert math.isclose(lr_at(110, cosine), 1e-4) and math.isclose(lr_at(500, cosine), 1e-4)
