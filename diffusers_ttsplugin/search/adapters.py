"""Pipeline adapters: what particle search needs from a flow model, for FLUX, SD3 and any velocity function.

A [`FlowAdapter`] encodes the prompts once ([`FlowAdapter.prepare`]), draws initial noise, evaluates the velocity of
many particles at per-particle times in minibatches of `max_batch_size` transformer rows, and decodes Tweedie
estimates to images in [0, 1]. The search itself never touches a pipeline.

Conventions: latents stay in the model's own (linear-interpolant) frame, x_t = (1 − t) x₀ + t x₁; times are linear
times t ∈ [0, 1] (t = 1 noise); `velocity` returns u = dx/dt, what FluxPipeline and StableDiffusion3Pipeline feed
their scheduler. Latents handed to the search are float32; the adapter casts to the transformer's dtype.

**NFE and classifier-free guidance:** one NFE is one evaluation of the (guided) velocity of one particle. With CFG
(SD3 `guidance_scale > 1`, FLUX `true_cfg_scale > 1` with a negative prompt) that evaluation runs the transformer on
two rows (conditional + unconditional): it counts as one NFE and as two transformer rows in
`transformer_rows`. FLUX's distilled guidance (`guidance_scale` as an embedding) is one row.

Adding a pipeline family = subclass [`FlowAdapter`] (usually [`DiffusersFlowAdapter`]), implement `prepare`,
`initial_noise`, `_velocity` and `decode`, and decorate it with `@register_adapter("YourPipelineClassName")`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

_ADAPTERS: dict[str, type[FlowAdapter]] = {}


def register_adapter(*pipeline_class_names: str):
    """Class decorator: use this adapter for pipelines of these classes (or their subclasses)."""

    def wrap(cls):
        for name in pipeline_class_names:
            _ADAPTERS[name] = cls
        return cls

    return wrap


def adapter_for(model: Any, max_batch_size: int | None = None) -> FlowAdapter:
    """The adapter for `model`: a [`FlowAdapter`] as is, a registered pipeline class, or any object with
    `velocity(x, t)` and `latent_shape` (and optionally `decode`), such as `diffusers_ttsplugin.toy.AnalyticFlow`."""
    if isinstance(model, FlowAdapter):
        if max_batch_size is not None:
            model.max_batch_size = _check_batch_size(max_batch_size)
        return model
    for klass in type(model).__mro__:
        if klass.__name__ in _ADAPTERS:
            return _ADAPTERS[klass.__name__](model, max_batch_size=max_batch_size)
    if callable(getattr(model, "velocity", None)) and hasattr(model, "latent_shape"):
        return VelocityAdapter(
            model.velocity,
            model.latent_shape,
            decoder=getattr(model, "decode", None),
            max_batch_size=max_batch_size,
        )
    known = ", ".join(sorted(_ADAPTERS))
    raise TypeError(
        f"no search adapter for {type(model).__name__}; supported pipelines: {known}, any object with "
        "`velocity(x, t)` and `latent_shape`, or a FlowAdapter (see diffusers_ttsplugin.search.adapters)"
    )


def _check_batch_size(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`max_batch_size` must be an int >= 1 or None, got {value!r}")
    return value


class FlowAdapter:
    """Base class: a flow model as the search sees it.

    Attributes:
        max_batch_size (`int`, *optional*): Most transformer rows per call (with CFG a particle takes two rows);
            `None` = all at once.
        latent_shape (`tuple[int, ...]`): Shape of one particle (set by `prepare`).
        device (`torch.device`): Where latents live.
        passes_per_nfe (`int`): Transformer rows per NFE (2 with classifier-free guidance, else 1).
        transformer_rows (`int`): Rows sent to the transformer so far (NFE × passes_per_nfe).
        default_output_type (`str`): Output type when the caller passes none.
    """

    default_output_type = "pt"

    def __init__(self, max_batch_size: int | None = None):
        self.max_batch_size = _check_batch_size(max_batch_size)
        self.latent_shape: tuple[int, ...] = ()
        self.device = torch.device("cpu")
        self.passes_per_nfe = 1
        self.transformer_rows = 0

    # -- to implement -------------------------------------------------------------------------------------------
    def prepare(self, prompts: list[str], **call_options: Any) -> None:
        """Encode the prompts once and fix the image size; reject options the adapter does not understand."""
        if call_options:
            raise TypeError(f"unexpected call options for {type(self).__name__}: {sorted(call_options)}")

    def initial_noise(self, num: int, generator: torch.Generator | None) -> torch.Tensor:
        """x₁ ~ N(0, I): `[num, *latent_shape]` float32 on `device`."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(
            (num, *self.latent_shape), generator=generator, device=self.device, dtype=torch.float32
        )

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        """One minibatch: x `[M, ...]` float32, t `[M]` linear times, prompt_index `[M]` → u `[M, ...]`."""
        raise NotImplementedError

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents `[M, ...]` → images `[M, 3, H, W]` float32 in [0, 1] (or the data itself for latent-space data)."""
        return x0

    def scheduler_config(self) -> dict:
        """Base config for the FlowSDEScheduler that drives the search (the pipeline's scheduler config)."""
        return {}

    def timestep_kwargs(self, num_steps: int) -> dict:
        """Keyword arguments for `scheduler.set_timesteps` the way the pipeline calls it."""
        return {"num_inference_steps": num_steps}

    # -- shared -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: torch.Tensor | float, prompt_index: torch.Tensor) -> torch.Tensor:
        """u at (x, t) for every row, in minibatches; one NFE per row. Returns float32."""
        rows = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(rows) if t.ndim == 0 else t
        if rows == 0:
            return torch.empty_like(x)
        chunk = rows
        if self.max_batch_size is not None:
            chunk = max(1, self.max_batch_size // self.passes_per_nfe)
        out = []
        for start in range(0, rows, chunk):
            sl = slice(start, start + chunk)
            u = self._velocity(x[sl], t[sl], prompt_index[sl])
            self.transformer_rows += (u.shape[0]) * self.passes_per_nfe
            out.append(u.float())
        return torch.cat(out) if len(out) > 1 else out[0]

    @torch.no_grad()
    def decode_batched(self, x0: torch.Tensor) -> torch.Tensor:
        if self.max_batch_size is None or x0.shape[0] <= self.max_batch_size:
            return self.decode(x0)
        return torch.cat(
            [self.decode(x0[i : i + self.max_batch_size]) for i in range(0, len(x0), self.max_batch_size)]
        )

    def postprocess(self, images: torch.Tensor, latents: torch.Tensor, output_type: str):
        """Final outputs: "pt" (tensor), "np" (float arrays, HWC), "pil" (PIL images) or "latent"."""
        if output_type == "latent":
            return latents
        if output_type == "pt":
            return images
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"output_type={output_type!r} needs images [N, 3, H, W]; use 'pt' or 'latent'")
        array = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return array
        if output_type == "pil":
            from PIL import Image

            pixels = (array * 255).round().astype(np.uint8)
            return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]
        raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")


class VelocityAdapter(FlowAdapter):
    """Any velocity function v(x, t) (plus a decoder) as a flow model: the analytic flow uses it.

    Args:
        velocity (`Callable`): `velocity(x, t) -> u` with x `[M, *latent_shape]` and t `[M]` linear times in [0, 1]
            (t = 1 noise), u = dx/dt; with `conditioned=True` it is called `velocity(x, t, prompts)` with the prompt
            of every row.
        latent_shape (`Sequence[int]`): Shape of one particle.
        decoder (`Callable`, *optional*): x̂₀ `[M, ...]` → images `[M, 3, H, W]` in [0, 1]; identity when omitted.
        conditioned (`bool`, defaults to False): Pass the prompts to `velocity`.
        device (`str` or `torch.device`, defaults to "cpu"): Where particles live.
        max_batch_size (`int`, *optional*): Most rows per velocity call.
        scheduler_config (`dict`, *optional*): Base FlowSDEScheduler config (e.g. `{"shift": 3.0}`).
    """

    def __init__(
        self,
        velocity: Callable[..., torch.Tensor],
        latent_shape: Sequence[int],
        decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        conditioned: bool = False,
        device: str | torch.device = "cpu",
        max_batch_size: int | None = None,
        scheduler_config: dict | None = None,
    ):
        super().__init__(max_batch_size)
        if not callable(velocity):
            raise TypeError("`velocity` must be callable")
        self._velocity_fn = velocity
        self._decoder = decoder
        self.conditioned = bool(conditioned)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        if not self.latent_shape or any(s < 1 for s in self.latent_shape):
            raise ValueError(f"`latent_shape` must be positive sizes, got {latent_shape!r}")
        self.device = torch.device(device)
        self._scheduler_config = dict(scheduler_config or {})
        self._prompts: list[str] = []

    def prepare(self, prompts: list[str], **call_options: Any) -> None:
        super().prepare(prompts, **call_options)
        self._prompts = list(prompts)

    def _velocity(self, x, t, prompt_index):
        if self.conditioned:
            prompts = [self._prompts[i] for i in prompt_index.tolist()]
            u = self._velocity_fn(x, t, prompts)
        else:
            u = self._velocity_fn(x, t)
        if not isinstance(u, torch.Tensor) or u.shape != x.shape:
            shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"the velocity function returned {shape} for input {tuple(x.shape)}")
        return u

    def decode(self, x0):
        return x0 if self._decoder is None else self._decoder(x0)

    def scheduler_config(self) -> dict:
        return dict(self._scheduler_config)


def _call_default(pipe, name: str, fallback: Any) -> Any:
    try:
        parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    except (TypeError, ValueError):
        return fallback
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


class DiffusersFlowAdapter(FlowAdapter):
    """Shared parts of the diffusers pipeline adapters (device, dtype, VAE decode, scheduler config)."""

    default_output_type = "pil"
    #: Call options of the pipeline that the search cannot honour (it makes its own latents and grid).
    unsupported_options = (
        "latents",
        "sigmas",
        "timesteps",
        "prompt_embeds",
        "pooled_prompt_embeds",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
        "ip_adapter_image",
        "ip_adapter_image_embeds",
        "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
        "num_images_per_prompt",
        "return_dict",
    )

    def __init__(self, pipe, max_batch_size: int | None = None):
        super().__init__(max_batch_size)
        self.pipe = pipe
        self.device = torch.device(pipe._execution_device)
        self.dtype = pipe.transformer.dtype
        self.height = self.width = None

    def _split_options(self, options: dict, accepted: Sequence[str]) -> None:
        bad = sorted(k for k in options if k in self.unsupported_options)
        if bad:
            raise TypeError(
                f"{type(self.pipe).__name__} option(s) {bad} cannot be used with the search (it draws its own "
                "latents and grid; the number of particles is set by the method)"
            )
        unknown = sorted(k for k in options if k not in accepted)
        if unknown:
            raise TypeError(
                f"unexpected {type(self.pipe).__name__} option(s) {unknown}; accepted: {sorted(accepted)}"
            )

    def _image_size(self, options: dict, multiple: int) -> tuple[int, int]:
        """`height`/`width` from the call options (default: the pipeline's), checked against the latent grid."""
        pipe = self.pipe
        height = options.get("height") or pipe.default_sample_size * pipe.vae_scale_factor
        width = options.get("width") or pipe.default_sample_size * pipe.vae_scale_factor
        if height % multiple or width % multiple:
            raise ValueError(f"`height` and `width` must be divisible by {multiple}, got {height}x{width}")
        return int(height), int(width)

    def scheduler_config(self) -> dict:
        return dict(self.pipe.scheduler.config)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = self._to_vae_latents(x0)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def _to_vae_latents(self, x0: torch.Tensor) -> torch.Tensor:
        return x0

    def postprocess(self, images, latents, output_type):
        if output_type == "pil":
            array = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            return self.pipe.image_processor.numpy_to_pil(array)
        return super().postprocess(images, latents, output_type)


@register_adapter("FluxPipeline")
class FluxAdapter(DiffusersFlowAdapter):
    """[`FluxPipeline`]: packed latents, distilled guidance embedding, optional true CFG with a negative prompt.

    Call options: `height`, `width`, `guidance_scale` (the guidance embedding, one row), `true_cfg_scale` with
    `negative_prompt` (true CFG: two rows per NFE), `prompt_2`, `negative_prompt_2`, `max_sequence_length`,
    `joint_attention_kwargs`. The grid of `time_grid="pipeline"` is FluxPipeline's: sigmas linspace(1, 1/N, N) with
    the resolution-dependent shift `mu`.
    """

    accepted_options = (
        "height",
        "width",
        "guidance_scale",
        "true_cfg_scale",
        "negative_prompt",
        "prompt_2",
        "negative_prompt_2",
        "max_sequence_length",
        "joint_attention_kwargs",
    )

    def prepare(self, prompts, **options):
        self._split_options(options, self.accepted_options)
        pipe = self.pipe
        multiple = pipe.vae_scale_factor * 2  # latents are packed in 2x2 patches
        self.height, self.width = self._image_size(options, multiple)
        max_sequence_length = options.get(
            "max_sequence_length", _call_default(pipe, "max_sequence_length", 512)
        )
        if max_sequence_length > 512:
            raise ValueError(f"`max_sequence_length` cannot be greater than 512, got {max_sequence_length}")
        prompt_2 = options.get("prompt_2")
        self.embeds, self.pooled, self.text_ids = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=prompt_2,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        negative = options.get("negative_prompt")
        true_cfg_scale = float(options.get("true_cfg_scale", _call_default(pipe, "true_cfg_scale", 1.0)))
        self.true_cfg_scale = true_cfg_scale
        self.do_true_cfg = true_cfg_scale > 1 and negative is not None
        if self.do_true_cfg:
            negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
            if len(negative) != len(prompts):
                raise ValueError(f"`negative_prompt` has {len(negative)} entries for {len(prompts)} prompts")
            self.negative_embeds, self.negative_pooled, self.negative_text_ids = pipe.encode_prompt(
                prompt=negative,
                prompt_2=options.get("negative_prompt_2"),
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=max_sequence_length,
            )
        self.passes_per_nfe = 2 if self.do_true_cfg else 1
        self.guidance_scale = float(options.get("guidance_scale", _call_default(pipe, "guidance_scale", 3.5)))
        self.joint_attention_kwargs = options.get("joint_attention_kwargs")
        self.num_channels_latents = pipe.transformer.config.in_channels // 4
        latent_h = 2 * (self.height // multiple)
        latent_w = 2 * (self.width // multiple)
        self.latent_shape = ((latent_h // 2) * (latent_w // 2), self.num_channels_latents * 4)
        self.image_ids = pipe._prepare_latent_image_ids(
            1, latent_h // 2, latent_w // 2, self.device, self.embeds.dtype
        )

    def initial_noise(self, num, generator):
        latents, _ = self.pipe.prepare_latents(
            num, self.num_channels_latents, self.height, self.width, self.embeds.dtype, self.device, generator
        )
        return latents.float()

    def timestep_kwargs(self, num_steps):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.pipe.scheduler.config
        mu = calculate_shift(
            self.latent_shape[0],
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return {
            "num_inference_steps": num_steps,
            "sigmas": np.linspace(1.0, 1 / num_steps, num_steps),
            "mu": mu,
        }

    def _velocity(self, x, t, prompt_index):
        transformer = self.pipe.transformer
        rows = x.shape[0]
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((rows,), self.guidance_scale, device=self.device, dtype=torch.float32)
        common = dict(
            hidden_states=x.to(self.dtype),
            timestep=t.to(self.dtype),
            guidance=guidance,
            img_ids=self.image_ids,
            joint_attention_kwargs=self.joint_attention_kwargs,
            return_dict=False,
        )
        u = transformer(
            pooled_projections=self.pooled[prompt_index],
            encoder_hidden_states=self.embeds[prompt_index],
            txt_ids=self.text_ids,
            **common,
        )[0]
        if self.do_true_cfg:
            negative = transformer(
                pooled_projections=self.negative_pooled[prompt_index],
                encoder_hidden_states=self.negative_embeds[prompt_index],
                txt_ids=self.negative_text_ids,
                **common,
            )[0]
            u = negative + self.true_cfg_scale * (u - negative)
        return u

    def _to_vae_latents(self, x0):
        return self.pipe._unpack_latents(x0, self.height, self.width, self.pipe.vae_scale_factor)


@register_adapter("StableDiffusion3Pipeline")
class SD3Adapter(DiffusersFlowAdapter):
    """[`StableDiffusion3Pipeline`] with classifier-free guidance (`guidance_scale > 1`: two rows per NFE).

    Call options: `height`, `width`, `guidance_scale`, `negative_prompt`, `prompt_2`, `prompt_3`,
    `negative_prompt_2`, `negative_prompt_3`, `max_sequence_length`, `clip_skip`, `joint_attention_kwargs`.
    The grid of `time_grid="pipeline"` is SD3's: `set_timesteps(N)` with the scheduler's shift (and `mu` with
    dynamic shifting).
    """

    accepted_options = (
        "height",
        "width",
        "guidance_scale",
        "negative_prompt",
        "prompt_2",
        "prompt_3",
        "negative_prompt_2",
        "negative_prompt_3",
        "max_sequence_length",
        "clip_skip",
        "joint_attention_kwargs",
    )

    def prepare(self, prompts, **options):
        self._split_options(options, self.accepted_options)
        pipe = self.pipe
        self.height, self.width = self._image_size(options, pipe.vae_scale_factor * pipe.patch_size)
        self.guidance_scale = float(options.get("guidance_scale", _call_default(pipe, "guidance_scale", 7.0)))
        self.do_cfg = self.guidance_scale > 1
        self.passes_per_nfe = 2 if self.do_cfg else 1
        negative = options.get("negative_prompt")
        if isinstance(negative, list | tuple) and len(negative) != len(prompts):
            raise ValueError(f"`negative_prompt` has {len(negative)} entries for {len(prompts)} prompts")
        max_sequence_length = options.get(
            "max_sequence_length", _call_default(pipe, "max_sequence_length", 256)
        )
        (self.embeds, self.negative_embeds, self.pooled, self.negative_pooled) = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=options.get("prompt_2"),
            prompt_3=options.get("prompt_3"),
            negative_prompt=negative,
            negative_prompt_2=options.get("negative_prompt_2"),
            negative_prompt_3=options.get("negative_prompt_3"),
            do_classifier_free_guidance=self.do_cfg,
            device=self.device,
            num_images_per_prompt=1,
            clip_skip=options.get("clip_skip"),
            max_sequence_length=max_sequence_length,
        )
        self.joint_attention_kwargs = options.get("joint_attention_kwargs")
        channels = pipe.transformer.config.in_channels
        self.latent_shape = (
            channels,
            self.height // pipe.vae_scale_factor,
            self.width // pipe.vae_scale_factor,
        )

    def initial_noise(self, num, generator):
        latents = self.pipe.prepare_latents(
            num, self.latent_shape[0], self.height, self.width, self.embeds.dtype, self.device, generator
        )
        return latents.float()

    def timestep_kwargs(self, num_steps):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        config = self.pipe.scheduler.config
        kwargs: dict[str, Any] = {"num_inference_steps": num_steps}
        if config.get("use_dynamic_shifting", None):
            patch = self.pipe.transformer.config.patch_size
            seq_len = (self.latent_shape[1] // patch) * (self.latent_shape[2] // patch)
            kwargs["mu"] = calculate_shift(
                seq_len,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.16),
            )
        return kwargs

    def _velocity(self, x, t, prompt_index):
        scale = float(self.pipe.scheduler.config.get("num_train_timesteps", 1000))
        hidden = x.to(self.dtype)
        timestep = (t * scale).to(self.dtype)
        embeds, pooled = self.embeds[prompt_index], self.pooled[prompt_index]
        if self.do_cfg:
            hidden = torch.cat([hidden, hidden])
            timestep = torch.cat([timestep, timestep])
            embeds = torch.cat([self.negative_embeds[prompt_index], embeds])
            pooled = torch.cat([self.negative_pooled[prompt_index], pooled])
        out = self.pipe.transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            joint_attention_kwargs=self.joint_attention_kwargs,
            return_dict=False,
        )[0]
        if self.do_cfg:
            uncond, cond = out.chunk(2)
            out = uncond + self.guidance_scale * (cond - uncond)
        return out
