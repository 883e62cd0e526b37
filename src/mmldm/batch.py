"""Sampling over a batch of conditions: one file, a folder of them or a manifest, with the
models loaded once.

    conditions = find_conditions("clips/", "audio")          # a2v: every media file below
    report = sample_batch(pipe, "a2v", conditions, "out/a2v", num=1, seed=0)

Each output is named after its condition (``clips/dogs/bark.wav`` -> ``out/a2v/dogs/bark_00.mp4``,
the number is the sample of that condition) and ``out/a2v/a2v.json`` maps every output to its
condition, seed and settings; it is rewritten after every batch, so a killed run keeps what it
wrote, and a re-run skips the outputs that exist (``overwrite=True`` redoes them). Output j
(conditions in sorted order, then their samples) is drawn from seed ``seed + j`` by a generator
of its own, recorded in the JSON: an output does not depend on the batch it was drawn in. A
condition that cannot be read is reported by name, the rest of the batch still runs, and the
failures are counted in the report.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmldm.console import progress
from mmldm.data.clips import frames_to_tensor_layout
from mmldm.data.dataset import VIDEO_EXTENSIONS, DatasetError, decode_frames, read_manifest
from mmldm.data.media import MediaError, read_audio, write_json
from mmldm.errors import MMLDMError
from mmldm.generation import save_generation
from mmldm.tasks import task_spec

if TYPE_CHECKING:  # a pipeline and a data config are handed in
    from mmldm.config import DataConfig
    from mmldm.pipeline import MMLDMPipeline

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"}
MANIFEST_EXTENSIONS = {".csv", ".jsonl"}


class ConditionError(MMLDMError, ValueError):
    """A condition source names nothing usable (a missing path, a folder without media)."""


@dataclass(frozen=True)
class Condition:
    """One given clip: its file, where the clip starts (s) and the output name it gives."""

    path: Path
    name: str  # output stem, relative to the output folder ("dogs/bark")
    start: float = 0.0


@dataclass(frozen=True)
class _Item:
    """One output to write: its name, its condition (None: unconditioned), seed and class."""

    name: str
    condition: Condition | None
    seed: int
    index: int  # j: its place among all the batch's outputs
    label: int | None = None


@dataclass
class BatchReport:
    """What a batch wrote: one record per output (this run's and the kept ones), the outputs
    skipped because they existed, and one ``"FILE: problem"`` line per failed condition."""

    records: list[dict] = field(default_factory=list)
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    failed: set[Condition] = field(default_factory=set, repr=False)  # not read again


def find_conditions(source: str | Path, kind: str, start: float = 0.0) -> list[Condition]:
    """The conditions of ``source``: a media file, a folder (every ``kind`` file below it,
    sorted) or a .csv / .jsonl manifest (a ``path`` column, relative to the manifest, and an
    optional ``start`` in seconds). ``kind``: "audio" (audio files and videos with sound) or
    "video". Rows of a manifest are not checked here: a row that points nowhere fails alone."""
    source = Path(source)
    if source.suffix.lower() in MANIFEST_EXTENSIONS:
        try:
            entries = read_manifest(source)
        except DatasetError as err:
            raise ConditionError(str(err)) from None
        return _unique(
            [
                Condition(e.path, _stem(e.path, source.parent), e.span[0] if e.span else start)
                for e in entries
            ]
        )
    if source.is_dir():
        suffixes = VIDEO_EXTENSIONS | (AUDIO_EXTENSIONS if kind == "audio" else set())
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in suffixes)
        if not files:
            names = ", ".join(sorted(suffixes))
            raise ConditionError(f"{source}: no {kind} files in this folder ({names})")
        return _unique([Condition(p, _stem(p, source), start) for p in files])
    if not source.is_file():
        raise ConditionError(f"{source}: no such file or folder")
    return [Condition(source, source.stem, start)]


def _unique(conditions: list[Condition]) -> list[Condition]:
    """Names that repeat (``bark.wav`` beside ``bark.mp4``, one file at two starts in a
    manifest) get ``_1``, ``_2``, ... in their order, so that no output overwrites another."""
    counts, seen = Counter(c.name for c in conditions), Counter()
    unique = []
    for c in conditions:
        if counts[c.name] > 1:
            seen[c.name] += 1
            c = replace(c, name=f"{c.name}_{seen[c.name]}")
        unique.append(c)
    return unique


def _stem(path: Path, root: Path) -> str:
    relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    return relative.with_suffix("").as_posix()


def read_condition(condition: Condition, kind: str, data: DataConfig) -> torch.Tensor:
    """One clip (``data.clip_seconds``) of the condition from its start: audio ``[N]`` mono at
    ``data.sample_rate`` in [-1, 1], or video ``[F, 3, S, S]`` in [-1, 1]. Raises
    :class:`~mmldm.data.media.MediaError` naming the file when it has no such track or is too
    short for one clip."""
    path, seconds = condition.path, data.clip_seconds
    if kind == "audio":
        wave = read_audio(path, data.sample_rate, start=condition.start, duration=seconds)
        need = data.clip_samples
        if len(wave) < need:
            raise MediaError(f"{path}: {len(wave) / data.sample_rate:.2f} s of audio from "
                             f"{condition.start:g} s, a clip needs {seconds:g} s")  # fmt: skip
        return torch.from_numpy(np.ascontiguousarray(wave[:need]))
    frames = decode_frames(path, data, condition.start, seconds)
    if len(frames) < data.num_frames:
        raise MediaError(f"{path}: {len(frames)} frames from {condition.start:g} s, a clip "
                         f"needs {data.num_frames}")  # fmt: skip
    return torch.from_numpy(frames_to_tensor_layout(frames[: data.num_frames]))


def sample_batch(
    pipe: MMLDMPipeline,
    task: str,
    conditions: list[Condition] | None,
    out: str | Path,
    *,
    num: int = 1,
    seed: int = 0,
    labels: list[int] | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    info: dict[str, Any] | None = None,
    **generate: Any,
) -> BatchReport:
    """``num`` samples of ``task`` per condition (``conditions`` None: ``num`` samples of an
    unconditioned task, named ``{task}_{i:04d}``) into ``out``, in batches of ``batch_size``
    outputs (default ``sample.batch_size``); ``labels``: one class for every output or one per
    output (class-conditional generators); ``generate``: the settings of
    :meth:`~mmldm.pipeline.MMLDMPipeline.generate`; ``info``: what ``{task}.json`` records
    beside the samples (e.g. the model paths)."""
    out = Path(out)
    kind = task_spec(task).given
    todo, report = _plan(task, conditions, out, num, seed, labels, overwrite)
    batch = batch_size or pipe.cfg.sample.batch_size
    bar = progress(total=len(todo), desc=f"sampling {task}")
    for first in range(0, len(todo), batch):
        items, given = _read_items(todo[first : first + batch], kind, pipe.cfg.data, report)
        if items:
            gens = [torch.Generator(pipe.device).manual_seed(item.seed) for item in items]
            classes = None if labels is None else [item.label for item in items]
            gen = pipe.generate(
                task, len(items), generator=gens, labels=classes, **given,
                **{**generate, "return_dict": True},
            )  # fmt: skip
            names = [item.name for item in items]
            records = save_generation(gen, out, items[0].index, names=names)
            for record, item in zip(records, items, strict=True):
                record["condition"] = item.condition and str(item.condition.path)
                record["condition_start"] = item.condition and item.condition.start
            report.records += records
            _write_record(out, task, report, info)
        bar.update(min(batch, len(todo) - first))
    bar.close()
    _write_record(out, task, report, info)
    return report


def _plan(
    task: str,
    conditions: list[Condition] | None,
    out: Path,
    num: int,
    seed: int,
    labels: list[int] | None,
    overwrite: bool,
) -> tuple[list[_Item], BatchReport]:
    """Every output still to write, and a report holding the records of the outputs kept from
    an earlier run."""
    if conditions is None:
        wanted = [_Item(f"{task}_{i:04d}", None, seed + i, i) for i in range(num)]
    else:
        pairs = [(c, k) for c in conditions for k in range(num)]
        wanted = [_Item(f"{c.name}_{k:02d}", c, seed + j, j) for j, (c, k) in enumerate(pairs)]
    if labels is not None:
        if len(labels) not in (1, len(wanted)):
            raise ConditionError(
                f"{len(labels)} labels for {len(wanted)} outputs: give 1 or one each"
            )
        per_output = labels * len(wanted) if len(labels) == 1 else labels
        wanted = [replace(w, label=y) for w, y in zip(wanted, per_output, strict=True)]
    report = BatchReport()
    done = {} if overwrite else _earlier_records(out, task)
    todo = []
    for item in wanted:
        file = f"{item.name}.mp4"
        if file in done and (out / file).is_file():
            report.records.append(done[file])
            report.skipped += 1
        else:
            todo.append(item)
    if report.skipped:
        log.info("%s: %d outputs exist, skipped (--overwrite to redo them)", out, report.skipped)
    return todo, report


def _earlier_records(out: Path, task: str) -> dict[str, dict]:
    path = out / f"{task}.json"
    if not path.is_file():
        return {}
    return {r["file"]: r for r in json.loads(path.read_text()).get("samples", [])}


def _read_items(
    items: list[_Item], kind: str | None, data: DataConfig, report: BatchReport
) -> tuple[list[_Item], dict[str, torch.Tensor]]:
    """The items whose condition reads, and their conditions stacked as ``generate`` takes
    them (``{"audio": [n, N]}`` or ``{"video": [n, F, 3, S, S]}``; {} for none); a condition
    that fails is reported once and its items dropped."""
    if kind is None:
        return items, {}
    ok, signals, read = [], [], {}
    for item in items:
        condition = item.condition
        if condition in report.failed:  # failed in an earlier batch: reported once
            continue
        if condition not in read:
            try:
                read[condition] = read_condition(condition, kind, data)
            except (MediaError, DatasetError, FileNotFoundError) as err:
                read[condition] = None
                report.failed.add(condition)
                report.failures.append(str(err))
                log.error("%s", err)
        if read[condition] is not None:
            ok.append(item)
            signals.append(read[condition])
    return ok, ({kind: torch.stack(signals)} if ok else {})


def _write_record(out: Path, task: str, report: BatchReport, info: dict[str, Any] | None) -> None:
    """``out/{task}.json``, written whole to a temporary file and renamed over the old one."""
    record = {**(info or {}), "task": task, "samples": report.records}
    write_json(out / f"{task}.json", {**record, "failures": report.failures})
