"""Zero-code SMC: a `callback_on_step_end` that resamples a pipeline's particles by reward.

    pipe.scheduler = FlowSDEScheduler.from_config(pipe.scheduler.config, sampler="sde", interpolant="vp")
    smc = SMCCallback(reward, prompt="a red apple")
    images = pipe("a red apple", num_images_per_prompt=8, callback_on_step_end=smc).images

The N images of each prompt are the particles. After every scheduler step the callback scores the Tweedie estimate
x̂₀ that [`~diffusers_ttsplugin.FlowSDEScheduler`] computed from this step's velocity (no extra NFE), updates the
weights exp((r_i − r_{i−1}) / λ) and resamples the rows of a prompt whose ESS fell below `ess_threshold · N`
(within that prompt only: the rows of other prompts, and their prompt embeddings, are never mixed). The x̂₀ of step
i belongs to the latents the step started from, so the weights of step i move the latents that step produced (their
children) — the standard one-step-lagged potential, which costs nothing extra. One consequence: right after a
resampling the copies share their parent's x̂₀, so their weights stay equal and the next step never resamples;
resampling can happen at most every other step. The weighting options (potentials, initial weights, tempering) and
the SMC step itself are [`~diffusers_ttsplugin.search.smc.SMCState`]'s, the same as `InferenceScaler(method="smc")`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.callbacks import PipelineCallback

from ..rewards import RewardFn, check_rewards, reward_input
from .smc import SMCConfig, SMCState


class SMCCallback(PipelineCallback):
    """Sequential Monte Carlo over `num_images_per_prompt` particles, as a pipeline callback.

    Needs the pipeline's scheduler to be a [`~diffusers_ttsplugin.FlowSDEScheduler`] with `sampler="sde"` (an ODE
    would copy particles that then stay identical). Works with FluxPipeline and StableDiffusion3Pipeline (and any
    pipeline with a registered search adapter for decoding; rewards with `input = "latent"` need none).

    Args:
        reward (`Callable`): `reward(images, prompts) -> tensor[N]` (see `diffusers_ttsplugin.rewards`).
        prompt (`str` or `list[str]`, *optional*): The prompt(s) given to the pipeline; passed to the reward and used
            to group rows (`num_images_per_prompt = rows / len(prompts)`). Without it the reward gets empty strings.
        num_images_per_prompt (`int`, *optional*): Particles per prompt, when `prompt` is not given and there is more
            than one prompt (default: all rows are one prompt's particles).
        temperature (`float`, defaults to 0.1): λ of the weights exp((r_i − r_{i−1}) / λ).
        ess_threshold (`float`, defaults to 0.5): Resample a prompt when ESS < threshold · N.
        resampling (`str`, defaults to "multinomial"): "multinomial", "systematic", "stratified" or "residual".
        potential (`str`, defaults to "difference"), initial_weights (`str`, defaults to "uniform"),
        tempering (`str`, defaults to "none"), tempering_gamma (`float`, *optional*): SMC's weighting, as in
            [`~diffusers_ttsplugin.search.smc.SMCConfig`] (FK steering's "max"/"sum" potentials, the released code's
            `initial_weights="reward"`, DAS-style tempering).
        generator (`torch.Generator`, *optional*): Seeds the resampling.
        height, width (`int`, *optional*): Image size, needed to decode FLUX's packed latents when it is not square.
        resample_last_step (`bool`, defaults to False): Also resample after the last step (duplicates the best
            final images instead of returning N distinct ones).
        nonfinite_rewards (`str`, defaults to "raise"): As in [`InferenceScaler`].

    Attributes:
        rewards (`torch.Tensor` `[rows]`): The latest reward of each row (after resampling, aligned with the rows).
        trace (`list[dict]`): Per step: step, time, rewards, ess (per prompt), resampled (per prompt), ancestors.
    """

    def __init__(
        self,
        reward: RewardFn,
        prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = None,
        temperature: float = 0.1,
        ess_threshold: float = 0.5,
        resampling: str = "multinomial",
        potential: str = "difference",
        initial_weights: str = "uniform",
        tempering: str = "none",
        tempering_gamma: float | None = None,
        generator: torch.Generator | None = None,
        height: int | None = None,
        width: int | None = None,
        resample_last_step: bool = False,
        nonfinite_rewards: str = "raise",
    ):
        # PipelineCallback's config machinery is for JSON-able settings; a reward is not one, so skip it.
        if not callable(reward):
            raise TypeError("`reward` must be callable as reward(images, prompts)")
        self.smc_config = SMCConfig(
            temperature=temperature,
            ess_threshold=ess_threshold,
            resampling=resampling,
            potential=potential,
            initial_weights=initial_weights,
            tempering=tempering,
            tempering_gamma=tempering_gamma,
        )
        if num_images_per_prompt is not None and (
            isinstance(num_images_per_prompt, bool)
            or not isinstance(num_images_per_prompt, int)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"`num_images_per_prompt` must be an int >= 1, got {num_images_per_prompt!r}")
        if nonfinite_rewards not in ("raise", "reject"):
            raise ValueError(f"`nonfinite_rewards` must be 'raise' or 'reject', got {nonfinite_rewards!r}")
        self.reward = reward
        self.reward_input = reward_input(reward)
        self.prompts = [prompt] if isinstance(prompt, str) else (list(prompt) if prompt is not None else None)
        self.num_images_per_prompt = num_images_per_prompt
        self.generator = generator
        self.height, self.width = height, width
        self.resample_last_step = bool(resample_last_step)
        self.nonfinite_rewards = nonfinite_rewards
        self._adapter = None
        self.reset()

    @property
    def tensor_inputs(self) -> list[str]:
        return ["latents"]

    def reset(self) -> None:
        """Forget the previous run (done automatically at step 0)."""
        self.rewards: torch.Tensor | None = None
        self.state: SMCState | None = None
        self.trace: list[dict] = []

    def _groups(self, rows: int) -> tuple[int, int]:
        if self.prompts is not None:
            if rows % len(self.prompts):
                raise ValueError(f"{rows} latents rows cannot be split over {len(self.prompts)} prompts")
            per = rows // len(self.prompts)
            if self.num_images_per_prompt is not None and per != self.num_images_per_prompt:
                raise ValueError(
                    f"{rows} rows for {len(self.prompts)} prompts is not {self.num_images_per_prompt} each"
                )
            return len(self.prompts), per
        per = self.num_images_per_prompt or rows
        if rows % per:
            raise ValueError(f"{rows} latents rows are not a multiple of num_images_per_prompt={per}")
        return rows // per, per

    def _decode(self, pipe, x0: torch.Tensor) -> torch.Tensor:
        from .adapters import DiffusersFlowAdapter, adapter_for

        if self._adapter is None or self._adapter.pipe is not pipe:
            self._adapter = adapter_for(pipe)
            if not isinstance(self._adapter, DiffusersFlowAdapter):
                raise TypeError(
                    f"SMCCallback cannot decode latents of {type(pipe).__name__}; use a latent reward"
                )
        adapter = self._adapter
        if x0.dim() == 3:  # FLUX's packed latents: [rows, (h/2)(w/2), 4c]
            if self.height is None or self.width is None:
                side = math.isqrt(x0.shape[1])
                if side * side != x0.shape[1]:
                    raise ValueError("non-square FLUX latents: pass `height` and `width` to SMCCallback")
                size = side * 2 * pipe.vae_scale_factor
                adapter.height = adapter.width = size
            else:
                adapter.height, adapter.width = self.height, self.width
        return adapter.decode(x0)

    @torch.no_grad()
    def callback_fn(
        self, pipeline, step_index: int, timestep, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        from ..scheduling_flow_sde import FlowSDEScheduler

        scheduler = pipeline.scheduler
        if not isinstance(scheduler, FlowSDEScheduler) or scheduler.config.sampler != "sde":
            raise ValueError(
                "SMCCallback needs `pipe.scheduler` to be a FlowSDEScheduler with sampler='sde' (with a deterministic "
                "sampler resampled copies stay identical): pipe.scheduler = FlowSDEScheduler.from_config("
                "pipe.scheduler.config, sampler='sde')"
            )
        if step_index == 0:
            self.reset()
        latents = callback_kwargs["latents"]
        x0 = scheduler.pred_original_sample
        if x0 is None or x0.shape != latents.shape:
            return callback_kwargs
        num_prompts, per = self._groups(latents.shape[0])
        prompts = [p for p in (self.prompts or [""] * num_prompts) for _ in range(per)]
        inputs = x0.float() if self.reward_input == "latent" else self._decode(pipeline, x0)
        rewards = check_rewards(
            self.reward(inputs, prompts),
            latents.shape[0],
            nonfinite=self.nonfinite_rewards,
            where=f"SMCCallback, step {step_index}",
            device=latents.device,
        ).view(num_prompts, per)
        record = {
            "step": int(step_index),
            "time": float(scheduler.sigmas[step_index]),
            "rewards": rewards.tolist(),
        }
        if self.state is None:
            last_step = max((scheduler.num_inference_steps or 0) - 1, 1)
            self.state = SMCState(
                self.smc_config, last_step, rewards, self.resample_last_step, where="SMCCallback"
            )
            decision = self.state.start()
        else:
            decision = self.state.update(rewards, step_index)
        record.update(ess=decision.ess.tolist(), resampled=decision.resample.tolist())
        if bool(decision.resample.any()):
            (moved,), ancestors = self.state.resample(
                decision, [latents.reshape(num_prompts, per, -1)], self.generator
            )
            callback_kwargs["latents"] = moved.reshape(latents.shape)
            record["ancestors"] = ancestors.tolist()
        self.rewards = self.state.rewards.reshape(-1)
        self.trace.append(record)
        return callback_kwargs

    def best_indices(self) -> list[int]:
        """Row index of the highest latest reward for each prompt (after the pipeline call)."""
        if self.rewards is None:
            raise RuntimeError("no rewards yet: run the pipeline with this callback first")
        num_prompts = len(self.trace[-1]["rewards"])
        per = self.rewards.numel() // num_prompts
        choice = self.rewards.view(num_prompts, per).argmax(dim=1)
        return (torch.arange(num_prompts) * per + choice.cpu()).tolist()
