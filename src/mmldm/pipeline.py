"""The MM-LDM pipeline: generator (DiT) + autoencoder + VAE + vocoder, every generation task,
in diffusers' calling conventions.

    pipe = MMLDMPipeline.from_pretrained("models/landscape").to("cuda", torch.bfloat16)
    g = torch.Generator("cuda").manual_seed(0)
    out = pipe("svg", num_samples=4, num_inference_steps=50, generator=g)
    out.frames, out.audio, out.fps, out.sample_rate  # [4, F, 3, S, S] in [0, 1], [4, L] in [-1, 1]
    pipe.save(out, "samples/")                       # one mp4 per sample, a contact sheet

A model folder is what ``mmldm export`` writes (:mod:`mmldm.model_folder`); training runs load
with ``from_pretrained(generator_run, autoencoder=autoencoder_run)``.

Tasks (:data:`mmldm.tasks.TASKS`): ``svg`` (sounding video), ``a2v`` / ``v2a`` (the other modality
from a given audio / video, guidance of the paper's eq. 9), ``audio`` / ``video`` (one modality of
a joint sample), ``long`` (K clips, each conditioned on the previous one), ``audio-continuation``
/ ``video-continuation`` (a given clip continued by K - 1 clips).

Why not ``diffusers.DiffusionPipeline`` / ``ModelMixin`` / ``ConfigMixin``: their loader builds
each component from a flat keyword-argument ``config.json`` and ignores unknown keys with a
warning, while every mmldm network takes one typed dataclass config that is checked key by key
and stored whole in its checkpoint; and the pipeline's state is more than modules (the latent
statistics, a vocoder that may be Griffin-Lim with no weights, the data and sampling settings,
the fingerprint that ties a generator to its autoencoder). What fits is used as it is: the VAE
of a model folder is a diffusers ``AutoencoderKL`` folder, the output is a diffusers
``BaseOutput``, generators follow diffusers' ``randn_tensor`` convention, samplers are diffusers
schedulers, and the folder's layout (``model_index.json``, one subfolder per component) is
diffusers'.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mmldm.audio.mel import audio_image
from mmldm.batch import ConditionError
from mmldm.checkpoint import Checkpoint, check_made_from, load_checkpoint
from mmldm.codec import Codec, DecodedClips
from mmldm.config import Config, override_settings
from mmldm.data.latents import LatentStats
from mmldm.diffusion.sampling import Generators
from mmldm.generation import MMLDMPipelineOutput, save_generation
from mmldm.model_folder import containing_model, read_model_folder
from mmldm.models.dit import MultiModalDiT
from mmldm.networks import dit_config
from mmldm.sampling import sample_latents
from mmldm.tasks import Task, task_spec
from mmldm.weights import load_weights

log = logging.getLogger(__name__)

# diffusers' per-step callback: (pipe, step index, timestep, {"latents": x, "clip": k}) -> dict;
# a "latents" entry in the returned dict replaces x.
StepEndCallback = Callable[["MMLDMPipeline", int, int, dict[str, Any]], dict | None]


def _generator_dit(ckpt: Checkpoint, cfg: Config, use_ema: bool) -> tuple[MultiModalDiT, str]:
    """The DiT of a generator checkpoint with its EMA weights ("ema") when it has them and
    ``use_ema``, else its raw ones ("dit"); and which of the two it holds."""
    dit = MultiModalDiT(dit_config(cfg))
    name = "ema" if use_ema and "ema" in ckpt.modules else "dit"
    load_weights(dit, ckpt.state_dict(name), source=f"{ckpt.path} [{name}]")
    return dit, name


class MMLDMPipeline:
    """The generator (DiT and its latent statistics) and the codec of the autoencoder its
    latents came from; ``cfg`` is the generator's config (its data / autoencoder sections are
    the codec's). ``class_names[i]``: the name of class ``i`` of the training data (as the
    checkpoint recorded them; the index as text when it did not), the labels a
    class-conditional generator takes."""

    def __init__(
        self,
        dit: MultiModalDiT,
        stats: LatentStats,
        codec: Codec,
        cfg: Config,
        class_names: list[str] | None = None,
    ) -> None:
        self.dit, self.stats, self.codec, self.cfg = dit, stats, codec, cfg
        n = cfg.data.num_classes
        recorded = class_names if class_names and len(class_names) == n else None
        self.class_names = recorded or [str(i) for i in range(n)]

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path,
        *,
        autoencoder: str | Path | None = None,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        vocoder: str | Path | None = None,
        decoder: str | Path | None = None,
        vae_decoder: str | Path | None = None,
        use_ema: bool = True,
        allow_foreign_autoencoder: bool = False,
        distilled: bool = True,
        overrides: Sequence[str] = (),
    ) -> MMLDMPipeline:
        """Load a model folder (``mmldm export``), or a generator run / checkpoint and, with
        ``autoencoder``, the autoencoder it was trained on.

        Args:
            vocoder: a HiFi-GAN folder (default: the model folder's ``vocoder/``, else the
                config's ``vocoder.path``, else Griffin-Lim).
            decoder: a distilled decoder of that autoencoder (``mmldm distill-decoder``) to
                decode with instead of its own (a model folder's ``decoder/`` by default).
            vae_decoder: a tiny VAE decoder (``mmldm distill-vae``) in place of the KL-VAE's
                decoder (its encoder still encodes a2v / v2a conditions).
            distilled: False: a model folder's distilled decoders are not used (the
                autoencoder's own guided decoder and the KL-VAE's decode).
            overrides: ``KEY=VALUE`` settings to change in the stored configs, e.g.
                ``["sample.eta=0.5"]`` (:func:`mmldm.config.override_settings`).
        """
        generator = pretrained
        if autoencoder is None:  # a model folder (its vocoder and decoders: Codec.load)
            parts = read_model_folder(pretrained)
            generator, autoencoder = parts.generator, parts.autoencoder
        elif (parts := containing_model(autoencoder)) is not None:
            autoencoder = parts.autoencoder  # the file whose fingerprint the generator names
        ckpt = load_checkpoint(generator, kind="generator")
        cfg = override_settings(ckpt.config, overrides, source=f"the config of {ckpt.path}")
        if not allow_foreign_autoencoder:
            check_made_from(ckpt, autoencoder)
        dit, name = _generator_dit(ckpt, cfg, use_ema)
        stats = LatentStats.from_state_dict(ckpt.state_dict("latent_stats"))
        codec = Codec.load(
            autoencoder,
            device=device,
            dtype=torch_dtype,
            decoder=decoder,
            vae_decoder=vae_decoder,
            vocoder=None if vocoder is None else str(vocoder),
            folder_decoders=distilled,
            overrides=overrides,
        )
        codec.get_vocoder()  # now: a wrong vocoder fails here, not after sampling
        dit.to(device, torch_dtype).eval().requires_grad_(False)
        log.info(
            "generator %s (step %d, %s), autoencoder %s", ckpt.path, ckpt.step, name, autoencoder
        )
        return cls(
            dit, stats, codec, cfg, json.loads(ckpt.metadata.get("mmldm.data_classes", "[]"))
        )

    def class_index(self, label: int | str) -> int:
        """A class given by its name in :attr:`class_names` (first: classes may be named "1",
        "10", ...) or by its index (checked against the generator when sampling)."""
        if not self.dit.num_classes:
            raise ConditionError("this generator is not class-conditional (dit.class_conditional)")
        if str(label) in self.class_names:
            return self.class_names.index(str(label))
        if isinstance(label, int) or str(label).isdecimal():
            return int(label)
        raise ConditionError(f"unknown class {label!r}: one of {', '.join(self.class_names)}")

    def to(
        self,
        device: str | torch.device | torch.dtype | None = None,
        dtype: torch.dtype | None = None,
    ) -> MMLDMPipeline:
        """Move every network to ``device`` and / or cast it to ``dtype`` (``pipe.to("cuda")``,
        ``pipe.to(torch.bfloat16)``, ``pipe.to("cuda", torch.bfloat16)``); the vocoder moves
        but stays float32. Returns self."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        codec = self.codec
        for module in (self.dit, codec.autoencoder, codec.vae, codec.vae_decoder):
            if module is not None:  # nn.Module's own: diffusers' warns of fp32 modules it lacks
                torch.nn.Module.to(module, device=device, dtype=dtype)
        if device is not None and codec.vocoder is not None:
            codec.vocoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.dit.eos_a.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.eos_a.dtype

    # -- latent sampling (mmldm.sampling: noise, prepare, denoise, unpack) ------------------

    def sample_latents(self, num: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (z_a, z_v) ``[num, C, h, w]``: :func:`mmldm.sampling.sample_latents`
        with this pipeline's DiT and config (same keyword arguments)."""
        return sample_latents(self.dit, self.cfg, num, **kwargs)

    # -- encode / decode -----------------------------------------------------------------------

    def encode(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None):
        """Given signals -> normalised latents (None where not given)."""
        dev, dt = self.device, self.dtype
        z_a = z_v = None
        if audio is not None:
            z_a = self.codec.encode_audio(audio.to(dev, dt))
        if video is not None:
            z_v = self.codec.encode_video(video.to(dev, dt))
        za_n, zv_n = self.stats.normalize(
            z_a if z_a is not None else torch.zeros(1, *self.cfg.audio_latent_shape),
            z_v if z_v is not None else torch.zeros(1, *self.cfg.video_latent_shape),
        )
        return (za_n if z_a is not None else None), (zv_n if z_v is not None else None)

    def decode(self, z_a: torch.Tensor, z_v: torch.Tensor, generator=None, labels=None, steps=None):
        """Normalised latents -> signals with the autoencoder's decoder settings (or a
        distilled decoder's); ``steps`` overrides sample.decoder_steps."""
        za, zv = self.stats.denormalize(z_a, z_v)
        return self.codec.decode(za, zv, labels=labels, generator=generator, steps=steps)

    # -- tasks ---------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        task: str = "svg",
        num_samples: int = 1,
        *,
        audio: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        guidance_scale_audio: float | None = None,
        guidance_scale_video: float | None = None,
        decoder_inference_steps: int | None = None,
        generator: Generators = None,
        seed: int = 0,
        clips: int | None = None,
        labels: list[int] | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
    ) -> MMLDMPipelineOutput | tuple:
        """``num_samples`` samples of ``task`` (:data:`mmldm.tasks.TASKS`). Args:
        audio: ``[N]`` or ``[num_samples, N]`` waveform at data.sample_rate (a2v,
            audio-continuation).
        video: ``[F, 3, S, S]`` or ``[num_samples, F, 3, S, S]`` in [-1, 1] (v2a,
            video-continuation).
        num_inference_steps: DiT sampling steps (default sample.steps).
        sampler: "ddim" or "dpm" (default sample.sampler).
        guidance_scale_audio, guidance_scale_video: classifier-free guidance per modality
            (eq. 9; default sample.guidance_*), used when something is given.
        decoder_inference_steps: signal decoder steps (default sample.decoder_steps; a
            distilled decoder's K).
        generator: a ``torch.Generator`` for the batch, or a list of ``num_samples``:
            sample i's noise then comes from generator i alone, whatever batch it is in.
        seed: seeds one generator for the batch when ``generator`` is None.
        clips: clips of a long / continued output (default sample.long_clips).
        labels: classes to generate, one for all or one per sample (class-conditional
            generators only).
        output_type: "pt" (tensors) or "np" (arrays), see :class:`MMLDMPipelineOutput`.
        return_dict: False returns the tuple ``(frames, audio)``.
        callback_on_step_end: called after every DiT step as ``callback(pipe, step,
            timestep, {"latents": x, "clip": k})`` with x the packed normalised latents
            ``[N, |z_a| + |z_v|]`` (:func:`mmldm.sampling.unpack`) and k the clip; a
            "latents" entry in the dict it returns replaces x.
        """
        spec = task_spec(task)
        g = torch.Generator(self.device).manual_seed(seed) if generator is None else generator
        if isinstance(g, list) and len(g) != num_samples:
            raise ValueError(f"{len(g)} generators for {num_samples} samples")
        kw = dict(steps=num_inference_steps, sampler=sampler, generator=g)
        kw.update(guidance_audio=guidance_scale_audio, guidance_video=guidance_scale_video)
        y = self._labels(labels, num_samples)
        given = self._given(task, spec, num_samples, audio, video)  # the given clip's signals
        num_clips = (clips or self.cfg.sample.long_clips) if spec.continued else 1
        frames, wave = self._clips(
            spec, given, num_samples, num_clips, y, kw, decoder_inference_steps,
            callback_on_step_end,
        )  # fmt: skip
        result = self._output(task, frames, wave, g, kw, decoder_inference_steps, y, output_type)
        return result if return_dict else (result.frames, result.audio)

    def _clips(
        self,
        spec: Task,
        given: dict[str, torch.Tensor],
        num: int,
        num_clips: int,
        labels: torch.Tensor | None,
        kw: dict,
        decoder_steps: int | None,
        callback: StepEndCallback | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output's ``num_clips`` clips of ``num`` samples, one after the other: (frames
        ``[num, K*F, 3, S, S]``, wave ``[num, K*n]``), in [-1, 1]. ``kw``: the DiT's sampling
        settings and generator(s)."""
        z_given = self.encode(**given)  # the given clip's normalised latents (None: not given)
        tracks, prev = [], {}
        for i in range(num_clips):
            if i == 0 and spec.continued and spec.given:  # the given clip opens the output
                z_a, z_v = z_given
                tracks.append(self._tracks(spec, given, None))
            else:  # a2v / v2a condition on the given clip, continuations on the previous one
                cond = {} if spec.continued else {"cond_a": z_given[0], "cond_v": z_given[1]}
                z_a, z_v = self.sample_latents(
                    num,
                    **cond,
                    **prev,
                    labels=labels,
                    callback=self._step_callback(callback, i),
                    **kw,
                )
                out = self.decode(z_a, z_v, generator=kw["generator"], steps=decoder_steps)
                tracks.append(self._tracks(spec, given, out))
            # the next clip follows this one in the modalities the task generates
            prev = {"prev_a": None if spec.given == "video" else z_a}
            prev["prev_v"] = None if spec.given == "audio" else z_v
        frames, wave = (torch.cat(track, 1) for track in zip(*tracks, strict=True))
        return frames, wave

    generate = __call__  # the same call under a name that reads well in scripts

    def _step_callback(self, callback: StepEndCallback | None, clip: int):
        """diffusers' ``callback_on_step_end`` as the sampling loop's per-step callback."""
        if callback is None:
            return None

        def step_end(i: int, t: int, x: torch.Tensor) -> torch.Tensor | None:
            out = callback(self, i, t, {"latents": x, "clip": clip})
            return (out or {}).get("latents")

        return step_end

    def _labels(self, labels: list[int] | None, num: int) -> torch.Tensor | None:
        """Classes ``[num]`` (one class for all, or one per sample), or None."""
        if labels is None:
            return None
        if not self.dit.num_classes:
            raise ConditionError("this generator is not class-conditional (dit.class_conditional)")
        outside = [y for y in labels if not 0 <= int(y) < self.dit.num_classes]
        if outside:  # the DiT would read them as "no class" or as another class
            raise ConditionError(
                f"class {outside[0]} is not one of this generator's 0..{self.dit.num_classes - 1}"
            )
        y = torch.tensor(labels, device=self.device)
        return y.expand(num) if len(labels) == 1 else y

    def _given(
        self,
        task: str,
        spec: Task,
        num: int,
        audio: torch.Tensor | None,
        video: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The given clip as ``{"audio": [num, n]}`` or ``{"video": [num, F, 3, S, S]}`` (one
        clip's samples n), or ``{}`` for tasks that take none."""
        if spec.given is None:
            return {}
        signal = {"audio": audio, "video": video}[spec.given]
        if signal is None:
            raise ConditionError(f"task {task} needs --{spec.given}")
        if spec.given == "audio":
            n = self.cfg.data.clip_samples
            signal = (signal if signal.dim() == 2 else signal[None])[:, :n]
        else:
            signal = signal if signal.dim() == 5 else signal[None]
        signal = signal.expand(num, *signal.shape[1:]).to(self.device)
        return {spec.given: signal}

    def _tracks(
        self, spec: Task, given: dict[str, torch.Tensor], out: DecodedClips | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One clip's (frames ``[N, F, 3, S, S]``, wave ``[N, n]``) as ``spec`` shows them,
        from the decoded ``out`` or, with None, from the given clip itself."""
        data = self.cfg.data
        if out is None:
            frames, wave = given.get("video"), given.get("audio")
            image = None if wave is None else audio_image(wave, data)
        else:
            frames, wave, image = out.frames, out.wave, out.audio_image
        video = {
            "generated": frames,
            "given": given.get("video"),
            "audio image": None
            if image is None
            else image[:, None].expand(-1, data.num_frames, -1, -1, -1),
        }[spec.video]
        n = data.clip_samples
        num = len(video)
        audio = {
            "generated": wave,
            "given": given.get("audio"),
            "silent": torch.zeros(num, n, device=video.device),
        }[spec.audio]
        return video.float(), audio.float()

    def _output(
        self,
        task: str,
        frames: torch.Tensor,
        wave: torch.Tensor,
        g: torch.Generator | list[torch.Generator],
        kw: dict,
        decoder_steps: int | None,
        labels: torch.Tensor | None,
        output_type: str,
    ) -> MMLDMPipelineOutput:
        """The call's output: its signals, with the seeds and settings that made them."""
        seeds = [x.initial_seed() for x in g] if isinstance(g, list) else [g.initial_seed()]
        return MMLDMPipelineOutput.from_signals(
            frames,
            wave,
            output_type=output_type,
            sample_rate=self.cfg.data.sample_rate,
            fps=self.cfg.data.fps,
            task=task,
            seeds=seeds if len(seeds) == len(frames) else seeds * len(frames),
            settings=self._settings(kw, decoder_steps),
            has_audio=task_spec(task).audio != "silent",
            labels=None if labels is None else labels.tolist(),
        )

    def _settings(self, kw: dict, decoder_steps: int | None) -> dict:
        """The sampling settings of a call, defaults resolved, for the output's record."""
        dec = self.codec.cfg.sample  # the decoder's settings (a distilled one's if loaded)
        sc = self.cfg.sample
        return {
            "steps": kw["steps"] or sc.steps,
            "sampler": kw["sampler"] or sc.sampler,
            "guidance_audio": sc.guidance_audio
            if kw["guidance_audio"] is None
            else kw["guidance_audio"],
            "guidance_video": sc.guidance_video
            if kw["guidance_video"] is None
            else kw["guidance_video"],
            "decoder_sampler": dec.decoder_sampler,
            "decoder_steps": decoder_steps or dec.decoder_steps,
        }

    # -- saving --------------------------------------------------------------------------------

    save = staticmethod(save_generation)
