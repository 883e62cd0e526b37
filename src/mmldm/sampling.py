"""The generator's sampling in plain steps, read straight down (flux's noise / prepare / denoise
/ unpack):

    x_T = noise(cfg, num, generator)                         # [num, |z_a| + |z_v|]
    model_fn = prepare(dit, cfg, given, scales, fixed_noise)  # the DiT, guided, on that state
    x_0 = sample_loop(model_fn, x_T, scheduler, steps)       # mmldm.diffusion.sampling's loop
    z_a, z_v = unpack(cfg, x_0)

:func:`sample_latents` runs the four. The pipeline (tasks, decoding) and the generator's
training previews both call it. Latents here are normalised (:class:`~mmldm.data.latents.
LatentStats`); the model's output may be eps or v (``diffusion.prediction_type``): nothing
here depends on which.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from diffusers.utils.torch_utils import randn_tensor

from mmldm.diffusion.sampling import Generators, ModelFn, StepCallback, guide, sample_loop
from mmldm.diffusion.schedule import add_noise, alphas_cumprod, make_sampler
from mmldm.models.dit import DiTInputs, MultiModalDiT

if TYPE_CHECKING:  # the sampler reads the shapes and settings of a generator's config
    from mmldm.config import Config


def pack(z_a: torch.Tensor, z_v: torch.Tensor) -> torch.Tensor:
    """``[N, *audio_latent_shape]``, ``[N, *video_latent_shape]`` -> one scheduler state
    ``[N, |z_a| + |z_v|]`` (one timestep for both modalities, as in training)."""
    return torch.cat([z_a.flatten(1), z_v.flatten(1)], dim=1)


def unpack(cfg: Config, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`."""
    shape_a, shape_v = cfg.audio_latent_shape, cfg.video_latent_shape
    n_a = shape_a[0] * shape_a[1] * shape_a[2]
    return x[:, :n_a].reshape(-1, *shape_a), x[:, n_a:].reshape(-1, *shape_v)


def noise(
    cfg: Config,
    num: int,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal ``[num, |z_a| + |z_v|]``: the audio latents' draw, then the video's.
    With a list of ``num`` generators, row i comes from generator i alone, so a sample does
    not depend on the batch it is drawn in."""
    kw = dict(generator=generator, device=torch.device(device), dtype=dtype)
    z_a = randn_tensor((num, *cfg.audio_latent_shape), **kw)
    z_v = randn_tensor((num, *cfg.video_latent_shape), **kw)
    return pack(z_a, z_v)


def prepare(
    dit: MultiModalDiT,
    cfg: Config,
    given: DiTInputs,
    scales: tuple[float, float],
    fixed_noise: torch.Tensor,
) -> ModelFn:
    """The DiT as ``model_fn(x, t)`` on the packed state.

    Args:
        given: the conditions: clean ``cond_a`` / ``cond_v`` (a2v / v2a), ``labels``,
            ``prev_a`` / ``prev_v`` (the previous clip); its z / t fields are unused.
        scales: classifier-free guidance (audio, video), eq. 9, against the null condition
            (zero latents, the null class); used only when something is given.
        fixed_noise: ``[N, |z_a| + |z_v|]``: a given modality's part of x_t is its clean latent
            forward-noised to t with this noise at every step (paper sec. 3.3).
    """
    fixed_a, fixed_v = unpack(cfg, fixed_noise)
    abar = alphas_cumprod(cfg.diffusion).to(fixed_noise.device)
    null_labels = None
    if given.labels is not None:
        null_labels = torch.full_like(given.labels, dit.num_classes)
    conditioned = any(c is not None for c in (given.cond_a, given.cond_v, given.labels))
    scales = scales if conditioned else (1.0, 1.0)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z_a, z_v = unpack(cfg, x)
        if given.cond_a is not None:  # the given audio, noised to this step
            z_a = add_noise(given.cond_a, fixed_a, t, abar)
        if given.cond_v is not None:
            z_v = add_noise(given.cond_v, fixed_v, t, abar)
        null_a, null_v = torch.zeros_like(z_a), torch.zeros_like(z_v)  # absent = zeros
        cond = replace(
            given,
            z_a=z_a,
            z_v=z_v,
            t=t,
            cond_a=null_a if given.cond_a is None else given.cond_a,
            cond_v=null_v if given.cond_v is None else given.cond_v,
        )
        null = replace(cond, cond_a=null_a, cond_v=null_v, labels=null_labels)
        return pack(*guide(dit, cond, null, scales))

    return model_fn


@torch.no_grad()
def sample_latents(
    dit: MultiModalDiT,
    cfg: Config,
    num: int,
    *,
    cond_a: torch.Tensor | None = None,
    cond_v: torch.Tensor | None = None,
    prev_a: torch.Tensor | None = None,
    prev_v: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    guidance_audio: float | None = None,
    guidance_video: float | None = None,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (z_a, z_v) ``[num, C, h, w]`` from the DiT, on its device and dtype;
    ``generator``: one for the batch or a list of ``num``, one per sample; ``callback``: see
    :func:`~mmldm.diffusion.sampling.sample_loop` (its x is the packed state, :func:`unpack`).

    A given ``cond_a`` (a2v) / ``cond_v`` (v2a) is the clean latent of that modality,
    returned as it is; ``prev_a`` / ``prev_v`` are the previous clip's latents (long,
    continuations); ``labels`` ``[num]`` classes. None: ``sample.*`` of ``cfg``.
    """
    sc = cfg.sample
    scales = (
        sc.guidance_audio if guidance_audio is None else guidance_audio,
        sc.guidance_video if guidance_video is None else guidance_video,
    )
    where = dict(device=dit.eos_a.device, dtype=dit.eos_a.dtype)
    x_T = noise(cfg, num, generator, **where)  # 1. noise
    fixed_noise = noise(cfg, num, generator, **where)  # the given modality's forward noise
    given = DiTInputs(None, None, None, cond_a, cond_v, labels, prev_a, prev_v)
    model_fn = prepare(dit, cfg, given, scales, fixed_noise)  # 2. prepare
    scheduler = make_sampler(cfg.diffusion, sampler or sc.sampler)
    x_0 = sample_loop(  # 3. denoise
        model_fn,
        x_T,
        scheduler,
        steps or sc.steps,
        eta=sc.eta,
        generator=generator,
        callback=callback,
    )
    z_a, z_v = unpack(cfg, x_0)  # 4. unpack
    return (z_a if cond_a is None else cond_a), (z_v if cond_v is None else cond_v)
