"""The generation tasks: what each is given and what its output shows. Plain data, so that the
command line can list them without loading a model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """What a generation task is given and what its output shows (docs/design.md §8)."""

    given: str | None = None  # "audio" / "video": the modality of a given clip
    continued: bool = False  # K clips, each conditioned on the previous clip's latents (the
    #                          given clip, where there is one, opens the output)
    video: str = "generated"  # the video track: "generated", "given" or "audio image"
    audio: str = "generated"  # the audio track: "generated", "given" or "silent"


TASKS = {
    "svg": Task(),
    "a2v": Task(given="audio", audio="given"),  # video guided by the audio (eq. 9)
    "v2a": Task(given="video", video="given"),
    "audio": Task(video="audio image"),  # one modality of a joint sample
    "video": Task(audio="silent"),
    "long": Task(continued=True),
    "audio-continuation": Task(given="audio", continued=True, video="audio image"),
    "video-continuation": Task(given="video", continued=True, audio="silent"),
}


def task_spec(task: str) -> Task:
    """The :class:`Task` named ``task``; a ValueError naming the tasks otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return TASKS[task]
