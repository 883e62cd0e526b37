"""Run folders: the resolved config, metrics as JSON lines, TensorBoard events and a loss plot.

::

    RUN/
        config.yaml        the resolved config of the run
        metrics.jsonl      one JSON object per logged step: step, each loss term, lr, seconds
        tensorboard/       TensorBoard events (``tensorboard --logdir RUN``)
        loss.png           loss curves, refreshed while training
        checkpoints/       see mmldm.checkpoint
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmldm.config import Config, save_config

log = logging.getLogger(__name__)

_NOT_PLOTTED = {"step", "seconds"}


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
    """

    def __init__(
        self,
        root: str | Path,
        config: Config,
        *,
        resume_step: int | None = None,
        main_process: bool = True,
        plot_every: int = 10,
    ) -> None:
        self.root = Path(root)
        self.enabled = main_process
        self.plot_every = plot_every
        self.records: list[dict[str, Any]] = []
        self._calls = 0
        self._writer = None
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

        from torch.utils.tensorboard import SummaryWriter  # heavy import, only when logging

        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(self.root / "tensorboard"), purge_step=purge)

    @property
    def elapsed(self) -> float:
        """Seconds of training in this run, including the time before a resume."""
        return self._offset + time.perf_counter() - self._start if self.enabled else 0.0

    def _rewrite_metrics(self) -> None:
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        os.replace(tmp, self.metrics_path)

    def log(self, step: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        """Append one record (``step``, the given values, ``seconds``) and mirror to TensorBoard."""
        if not self.enabled:
            return {}
        record: dict[str, Any] = {"step": int(step)}
        record.update({k: float(v) for k, v in metrics.items()})
        record["seconds"] = round(self.elapsed, 3)
        self.records.append(record)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        assert self._writer is not None
        for key, value in record.items():
            if key not in _NOT_PLOTTED:
                self._writer.add_scalar(key, value, step)
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
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def plot_metrics(records: list[dict[str, Any]], path: str | Path) -> None:
    """One small panel per logged value against step (log scale when it stays positive), with
    a smoothed curve over the raw one once there are many points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k not in _NOT_PLOTTED})
    keys.sort(key=lambda k: (k != "loss", k.startswith("lr"), k))  # total loss first, lr last
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        if not pts:
            continue
        steps, values = zip(*pts, strict=True)
        ax.plot(steps, values, linewidth=0.8, alpha=0.45 if len(values) > 50 else 1.0)
        if len(values) > 50:
            smooth, acc = [], values[0]
            for v in values:
                acc = 0.95 * acc + 0.05 * v
                smooth.append(acc)
            ax.plot(steps, smooth, linewidth=1.5)
        if min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"{Path(path).parent.name}: training curves (x: step)", fontsize=10)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    os.replace(tmp, path)  # a viewer never sees half a picture
