import json
import math
import time

import numpy as np
import pytest
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from mmldm.config import ConfigError, load_config
from mmldm.run import RunLogger, metric_curves, metrics_figure, plot_metrics, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cfg():
    return load_config("tiny")


def tracking(run, log_with="tensorboard"):
    """An accelerator whose trackers write under ``run/logs`` (as make_accelerator's do)."""
    project = ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs"))
    return Accelerator(cpu=True, log_with=log_with, project_config=project)


def _log_steps(logger, steps):
    for step in steps:
        logger.log(step, {"loss": 1.0 / step, "loss_mse": 0.5 / step, "lr": 1e-3})


def test_run_folder_contents(tmp_path, cfg):
    run = tmp_path / "run"
    with RunLogger(run, cfg, plot_every=2, accelerator=tracking(run)) as logger:
        _log_steps(logger, range(1, 6))
    assert load_config(run / "config.yaml") == cfg
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    for r in records:
        assert set(r) == {"step", "loss", "loss_mse", "lr", "seconds"}
    seconds = [r["seconds"] for r in records]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    assert (run / "loss.png").read_bytes()[:8] == PNG_MAGIC
    assert list((run / "logs" / "mmldm").glob("events.out.tfevents.*"))


def test_tensorboard_events_hold_the_scalars(tmp_path, cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    with RunLogger(run, cfg, accelerator=tracking(run), project="mmldm-vae") as logger:
        _log_steps(logger, [1, 2, 3, 4])
    # TensorBoard reads event files in the order of their names, which start with the second
    # they were opened in (then host, pid, a per-process count): a resumed run opens it later
    time.sleep(1.1)
    with RunLogger(run, cfg, resume_step=2, accelerator=tracking(run), project="mmldm-vae") as lg:
        _log_steps(lg, [3])  # resumed from step 2: the events of the lost steps 3-4 are purged
    events = EventAccumulator(str(run / "logs" / "mmldm-vae"))
    events.Reload()
    assert {"loss", "loss_mse", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert events.Scalars("loss")[1].value == pytest.approx(0.5)
    # the resolved config is stored as the run's hyperparameters (dotted keys of scalars)
    stored = sorted((run / "logs" / "mmldm-vae").glob("*/hparams.yml"))  # one per start
    assert len(stored) == 2
    text = stored[0].read_text()
    assert "train.generator.ema_decay: 0.9" in text and "data.num_frames: 4" in text


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    from mmldm.run import wandb_run

    first = wandb_run(tmp_path / "run", new=True)
    resumed = wandb_run(tmp_path / "run", new=False)
    assert resumed == first and first["resume"] == "allow" and first["name"] == "run"
    assert wandb_run(tmp_path / "run", new=True)["id"] != first["id"]  # a new run, same folder
    (tmp_path / "run" / "logs" / "wandb_id").write_text("")  # killed while writing it
    assert wandb_run(tmp_path / "run", new=False)["id"]


def test_trackers_that_cannot_run_are_refused_by_name(tmp_path):
    import importlib.util

    from mmldm.train.common import make_accelerator

    def accelerator(names):
        cfg = load_config("tiny", [f"train.log_with=[{','.join(names)}]"])
        return make_accelerator(cfg, cfg.train.vae, tmp_path)

    with pytest.raises(ConfigError, match="train.log_with.*nonsense"):
        accelerator(["nonsense"])
    absent = next(
        (n for n in ("wandb", "comet_ml", "aim", "dvclive") if importlib.util.find_spec(n) is None),
        None,
    )
    if absent is None:
        pytest.skip("every optional tracker is installed here")
    with pytest.raises(ConfigError, match=f"{absent}, which is not installed"):
        accelerator(["tensorboard", absent])
    assert accelerator([]).log_with == []  # metrics.jsonl and loss.png only


@pytest.mark.parametrize("gpu", [False, True])
def test_launcher_precision_is_followed_unless_the_config_names_one(monkeypatch, gpu):
    import torch

    from mmldm.train.common import training_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    device_default = "bf16" if gpu else "no"
    auto, fp32 = load_config("tiny"), load_config("tiny", ["train.mixed_precision=no"])
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert training_precision(auto) == (device_default, None)  # python -m / torchrun
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate launch, no flag
    assert training_precision(auto) == (device_default, None)
    assert training_precision(fp32) == ("no", None)  # fp32 on purpose
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # accelerate launch --mixed_p...
    assert training_precision(auto) == ("fp16", None)
    precision, warning = training_precision(fp32)
    assert precision == "no" and "train.mixed_precision=no (config) overrides" in warning


def test_loss_plot_draws_the_logged_values_and_a_trend_that_follows_them(tmp_path):
    """A small term falling a thousandfold in 300 logged steps, with noise: the plot's raw line
    is exactly what was logged, and its trend stays within 30% of the noiseless curve from the
    first step to the last (a running average from the first value stayed hundreds of times
    above it)."""
    rng = np.random.default_rng(0)
    steps = np.arange(1, 301)
    trend = 1e-2 * np.exp(-steps / 300 * math.log(1000))
    noisy = trend * np.exp(rng.normal(0, 0.3, len(steps)))
    records = [
        {"step": int(s), "loss": 1.0, "kl": float(v)} for s, v in zip(steps, noisy, strict=True)
    ]
    records[7]["kl"] = float("nan")  # left out, not plotted as a gap or a zero
    curve = metric_curves(records)["kl"]
    kept = [r for r in records if math.isfinite(r["kl"])]
    assert curve.steps == [r["step"] for r in kept] and curve.values == [r["kl"] for r in kept]
    assert curve.log_scale
    ratio = np.asarray(curve.smooth) / np.delete(trend, 7)
    assert ratio.max() < 1.3 and ratio.min() > 1 / 1.3, (ratio.min(), ratio.max())

    fig = metrics_figure(records)
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert list(panels)[:2] == ["loss", "kl"]  # the total loss first
    raw, smooth = panels["kl"].get_lines()
    assert list(raw.get_ydata()) == curve.values and list(smooth.get_ydata()) == curve.smooth
    assert panels["kl"].get_yscale() == "log"
    line = panels["loss"].get_lines()[0]  # constant: no log scale
    assert list(line.get_xdata()) == list(steps) and panels["loss"].get_yscale() == "linear"
    plot_metrics(records, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC


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
