"""``mmldm app``: a local web page (Gradio) to try a model: pick a task, upload a clip, set the
seed, steps and guidance, and watch the result play with its sound.

Gradio is an optional extra (``pip install 'mmldm[app]'``) and this is the only module that
imports it. The page serves on 127.0.0.1 unless told otherwise; nothing is shared publicly and
Gradio's usage analytics are off.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr
import torch

from mmldm.batch import Condition, read_condition
from mmldm.data.media import MediaError, write_video
from mmldm.tasks import TASKS

if TYPE_CHECKING:  # the caller loads the pipeline
    from mmldm.pipeline import MMLDMPipeline

GIVEN_HELP = {
    "audio": "an audio file or a video with sound",
    "video": "a video",
}


def generate_clip(
    pipe: MMLDMPipeline,
    outputs: Path,
    task: str,
    condition: str | None,
    start: float = 0.0,
    seed: int = 0,
    steps: int | None = None,
    guidance_audio: float | None = None,
    guidance_video: float | None = None,
    label: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """One sample of ``task`` written to an mp4 in ``outputs``; returns its path and the
    settings that made it. ``condition``: the uploaded file of a task that is given a clip.

    Raises:
        ValueError: a task that needs a clip without one, or a clip that cannot be used (the
            message names the file and what is wrong).
    """
    spec = TASKS[task]
    given = {}
    if spec.given:
        if not condition:
            raise ValueError(f"{task} needs {GIVEN_HELP[spec.given]}: upload one")
        clip = Condition(Path(condition), Path(condition).stem, float(start or 0))
        try:
            given[spec.given] = read_condition(clip, spec.given, pipe.cfg.data)
        except MediaError as err:
            raise ValueError(str(err)) from None
    out = pipe(
        task,
        1,
        **given,
        generator=torch.Generator(pipe.device).manual_seed(int(seed or 0)),
        num_inference_steps=int(steps) if steps else None,
        guidance_scale_audio=guidance_audio,
        guidance_scale_video=guidance_video,
        labels=None if label is None else [int(label)],
    )
    outputs.mkdir(parents=True, exist_ok=True)
    path = outputs / f"{task}_seed{int(seed or 0)}_{uuid.uuid4().hex[:8]}.mp4"
    audio = out.waveform(0) if out.has_audio else None
    write_video(path, out.video(0), out.fps, audio, out.sample_rate if out.has_audio else None)
    return path, {"task": task, "seed": int(seed or 0), **out.settings}


def build_app(pipe: MMLDMPipeline, outputs: Path) -> gr.Blocks:
    """The page: the task and its inputs on the left, the result on the right."""
    sc = pipe.cfg.sample
    classes = pipe.dit.num_classes
    with gr.Blocks(title="MM-LDM") as app:
        gr.Markdown(
            "# MM-LDM: sounding video generation\n"
            "svg: a video with its sound; a2v: video for an uploaded audio; v2a: audio for an "
            "uploaded video; audio / video: one modality; long: several clips in a row; "
            "continuations: an uploaded clip continued."
        )
        with gr.Row():
            with gr.Column():
                task = gr.Radio(list(TASKS), value="svg", label="task")
                condition = gr.File(
                    label="given clip (a2v, audio-continuation: audio or a video with sound; "
                    "v2a, video-continuation: a video)",
                    file_types=["audio", "video"],
                    type="filepath",
                )
                start = gr.Number(0.0, label="where the given clip starts (s)")
                seed = gr.Number(0, precision=0, label="seed")
                steps = gr.Slider(1, 250, value=sc.steps, step=1, label="sampling steps")
                guidance_audio = gr.Number(sc.guidance_audio, label="guidance for audio (eq. 9)")
                guidance_video = gr.Number(sc.guidance_video, label="guidance for video (eq. 9)")
                label = gr.Dropdown(
                    [(name, i) for i, name in enumerate(pipe.class_names)],
                    value=0 if classes else None,
                    label="class",
                    visible=bool(classes),
                )
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="result", autoplay=True)
                settings = gr.JSON(label="settings")

        def run(task, condition, start, seed, steps, g_a, g_v, label):
            try:
                path, info = generate_clip(
                    pipe, outputs, task, condition, start, seed, steps, g_a, g_v,
                    label if classes else None,
                )  # fmt: skip
            except ValueError as err:
                raise gr.Error(str(err)) from None
            return str(path), info

        inputs = [task, condition, start, seed, steps, guidance_audio, guidance_video, label]
        button.click(run, inputs, [video, settings])
    return app


def serve(
    pipe: MMLDMPipeline,
    host: str = "127.0.0.1",
    port: int = 7860,
    outputs: str | Path | None = None,
    block: bool = True,
) -> gr.Blocks:
    """Serve the page of ``pipe`` at ``http://host:port``; with ``block=False`` return the
    running app (``app.close()`` stops it). Results go to ``outputs`` (default a temporary
    folder)."""
    folder = Path(outputs or tempfile.mkdtemp(prefix="mmldm-app-"))
    app = build_app(pipe, folder)
    app.queue(default_concurrency_limit=1)  # one generation at a time: one model
    app.launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(folder)],
        prevent_thread_lock=not block,
        share=False,
        quiet=not block,
    )
    return app
