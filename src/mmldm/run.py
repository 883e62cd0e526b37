"""Run folders: the resolved config, metrics as JSON lines, a loss plot, and the experiment
trackers of ``train.log_with`` through accelerate (TensorBoard by default; wandb, MLflow, ...).

::

    RUN/
        config.yaml        the resolved config of the run
        metrics.jsonl      one JSON object per logged step: step, each loss term, lr, seconds
        loss.png           loss curves, refreshed while training
        logs/mmldm-STAGE/  TensorBoard events (``tensorboard --logdir RUN``); wandb's files
                           go to logs/ (trackers given no folder by accelerate, such as
                           MLflow, write where their own settings say)
        checkpoints/       see mmldm.checkpoint
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmldm.config import Config, config_to_dict, save_config

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

_NOT_PLOTTED = {"step", "seconds"}
SMOOTH_FROM = 50  # points of a curve from which loss.png draws its trend over the values


class RunLogger:
    """Writes a run folder. Only the main process writes; on others every call is a no-op.

    Args:
        root: the run folder (created when missing).
        config: the resolved config, written to ``config.yaml``.
        resume_step: when resuming from a checkpoint at this step, metrics logged after it (by
            the process that was killed) are dropped so that the resumed run continues the
            same curves, and the elapsed seconds continue from the last kept record.
        main_process: False on the other ranks of a distributed run.
        plot_every: redraw ``loss.png`` every this many ``log`` calls.
        accelerator: its trackers (``Accelerator(log_with=..., project_config=...)``, see
            :func:`mmldm.train.common.make_accelerator`) receive every record and the config
            as hyperparameters; None: metrics.jsonl and loss.png only.
        project: the trackers' project name (TensorBoard: the sub-folder of ``RUN/logs``).
    """

    def __init__(
        self,
        root: str | Path,
        config: Config,
        *,
        resume_step: int | None = None,
        main_process: bool = True,
        plot_every: int = 10,
        accelerator: Accelerator | None = None,
        project: str = "mmldm",
    ) -> None:
        self.root = Path(root)
        self.enabled = main_process
        self.plot_every = plot_every
        self.records: list[dict[str, Any]] = []
        self._calls = 0
        self.accelerator = accelerator if accelerator is not None and accelerator.log_with else None
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(config, self.root / "config.yaml")
        self.metrics_path = self.root / "metrics.jsonl"
        if resume_step is not None and self.metrics_path.exists():
            self.records = [r for r in read_metrics(self.metrics_path) if r["step"] <= resume_step]
        self._rewrite_metrics()
        self._offset = self.records[-1]["seconds"] if self.records else 0.0
        self._start = time.perf_counter()
        if self.accelerator is not None:
            (self.root / "logs").mkdir(exist_ok=True)  # wandb writes there, whatever starts first
            kwargs = self._tracker_kwargs(resume_step)
            self.accelerator.init_trackers(project, tracker_config(config), init_kwargs=kwargs)

    def _tracker_kwargs(self, resume_step: int | None) -> dict[str, dict[str, Any]]:
        """Each tracker's own arguments: TensorBoard drops the events a killed run wrote after
        its last checkpoint; wandb continues the same run; the others name the run after its
        folder."""
        purge = {} if resume_step is None else {"purge_step": resume_step + 1}
        kwargs: dict[str, dict[str, Any]] = {
            "tensorboard": purge,
            "mlflow": {"run_name": self.root.name},
        }
        assert self.accelerator is not None
        if "wandb" in {str(tracker) for tracker in self.accelerator.log_with}:
            kwargs["wandb"] = wandb_run(self.root, new=resume_step is None)
        return kwargs

    @property
    def elapsed(self) -> float:
        """Seconds of training in this run, including the time before a resume."""
        return self._offset + time.perf_counter() - self._start if self.enabled else 0.0

    def _rewrite_metrics(self) -> None:
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        os.replace(tmp, self.metrics_path)

    def log(self, step: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        """Append one record (``step``, the given values, ``seconds``) and send its values to
        the trackers."""
        if not self.enabled:
            return {}
        record: dict[str, Any] = {"step": int(step)}
        record.update({k: float(v) for k, v in metrics.items()})
        record["seconds"] = round(self.elapsed, 3)
        self.records.append(record)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.accelerator is not None:
            values = {k: v for k, v in record.items() if k not in _NOT_PLOTTED}
            self.accelerator.log(values, step=int(step))
        self._calls += 1
        if self._calls % self.plot_every == 0:
            self.plot()
        return record

    def plot(self) -> None:
        if self.enabled and self.records:
            plot_metrics(self.records, self.root / "loss.png")

    def close(self) -> None:
        if not self.enabled:
            return
        self.plot()
        if self.accelerator is not None:  # what this logger started; end_training then finds
            for tracker in self.accelerator.trackers:  # none and ends only the process group
                tracker.finish()
            self.accelerator.trackers.clear()
            self.accelerator = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wandb_run(root: Path, new: bool) -> dict[str, str]:
    """wandb's ``init`` arguments for the run folder ``root``: named after it, its files in
    ``root/logs``, and a run id kept in ``root/logs/wandb_id``: a new id for a ``new`` run, the
    kept one when resuming, so that a resumed run goes on logging to the same wandb run (wandb
    keeps the steps a killed run logged after its last checkpoint; the resumed run's repeats of
    them are dropped)."""
    path = root / "logs" / "wandb_id"
    run_id = "" if new or not path.is_file() else path.read_text().strip()
    if not run_id:  # a new run, or a file left empty by a kill
        run_id = uuid.uuid4().hex[:16]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id)
    return {"name": root.name, "dir": str(root / "logs"), "id": run_id, "resume": "allow"}


def tracker_config(cfg: Config) -> dict[str, bool | int | float | str]:
    """The resolved config as trackers take hyperparameters: dotted keys of scalars (lists and
    empty values written as text)."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            plain = isinstance(value, (bool, int, float, str))
            flat[prefix] = value if plain else json.dumps(value)

    walk("", config_to_dict(cfg))
    return flat


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl``; a torn last line (process killed mid-write) is skipped."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping unreadable line %d", path, number)
    return records


@dataclass
class Curve:
    """One logged value against step, as ``loss.png`` draws it."""

    steps: list[int]
    values: list[float]  # exactly what metrics.jsonl holds (non-finite values left out)
    smooth: list[float] | None  # the trend drawn over many points, else None
    log_scale: bool  # positive values spanning more than a decade


def smooth_curve(values: Sequence[float], log_scale: bool) -> list[float]:
    """A centred moving average over about 5% of the points (at least 5; cut at both ends),
    of the logarithms when the panel is log-scaled (a geometric mean).

    Centred, it has no lag away from the ends: a running average (an EMA) trails a falling loss
    by its whole time constant, and drew small, fast-falling terms up to hundreds of times above
    their logged values. Of logarithms, an exponential decay is followed exactly but for the
    last and first few points (a lag of a quarter window at most)."""
    x = np.log(np.asarray(values, dtype=np.float64)) if log_scale else np.asarray(values, float)
    half = max(2, len(x) // 40)
    sums = np.concatenate([[0.0], np.cumsum(x)])
    out = []
    for i in range(len(x)):
        lo, hi = max(0, i - half), min(len(x), i + half + 1)  # window [lo, hi)
        out.append((sums[hi] - sums[lo]) / (hi - lo))
    return np.exp(out).tolist() if log_scale else [float(v) for v in out]


def metric_curves(records: list[dict[str, Any]]) -> dict[str, Curve]:
    """Each logged value's curve (total loss first, learning rates last)."""
    keys = sorted({k for r in records for k in r if k not in _NOT_PLOTTED})
    keys.sort(key=lambda k: (k != "loss", k.startswith("lr"), k))
    curves = {}
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        if not pts:
            continue
        steps, values = (list(v) for v in zip(*pts, strict=True))
        log_scale = min(values) > 0 and max(values) / min(values) > 10
        smooth = smooth_curve(values, log_scale) if len(values) > SMOOTH_FROM else None
        curves[key] = Curve(steps, values, smooth, log_scale)
    return curves


def metrics_figure(records: list[dict[str, Any]], title: str = "training curves"):
    """A matplotlib figure with one small panel per logged value against step: the logged
    values, and the centred trend (:func:`smooth_curve`) over them once there are many."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = metric_curves(records)
    cols = max(1, min(3, len(curves)))
    rows = max(1, -(-len(curves) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (key, curve) in zip(axes.flat, curves.items(), strict=False):
        many = curve.smooth is not None
        ax.plot(curve.steps, curve.values, linewidth=0.8, alpha=0.45 if many else 1.0)
        if many:
            ax.plot(curve.steps, curve.smooth, linewidth=1.5)
        if curve.log_scale:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    fig.suptitle(f"{title} (x: step)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_metrics(records: list[dict[str, Any]], path: str | Path) -> None:
    """Write :func:`metrics_figure` of ``records`` to ``path`` (PNG) atomically."""
    import matplotlib.pyplot as plt

    fig = metrics_figure(records, f"{Path(path).parent.name}: training curves")
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    os.replace(tmp, path)  # a viewer never sees half a picture
