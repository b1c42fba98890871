# Copyright 2025 The ttsplugin authors. Parts marked "Copied from" are from diffusers (Apache-2.0), The HuggingFace
# Team. Licensed under the Apache License, Version 2.0.
"""FlowSDEScheduler: a drop-in for FlowMatchEulerDiscreteScheduler that samples a flow model with the
marginal-preserving reverse SDE, optionally after converting the linear interpolant to variance preserving.

How the frames fit into an unmodified pipeline
----------------------------------------------
FluxPipeline / StableDiffusion3Pipeline call `transformer(latents, timestep=t / 1000)` for each `t` in
`scheduler.timesteps` and then `scheduler.step(noise_pred, t, latents)`. The transformer is a *linear*-interpolant
model, so the scheduler keeps the latents in that frame: entry i of the grid is a linear time σ_i (`self.sigmas`)
and the exposed `timesteps` are σ_i · num_train_timesteps, so the pipeline evaluates u_{σ_i}(x) where x *is* a
sample of p_{σ_i}. With `interpolant="vp"` the grid is really one of VP times s_i, and σ_i = t_{s_i} is the
linear time of equal SNR (PAPERS.md §4). The VP state would be x̄ = c_{s_i} x, and the model evaluated at
(x̄ / c_{s_i}, t_{s_i}) = (x, σ_i): exactly the call the pipeline already made. `step()` then
  1. converts: ū = ċ x + c ṫ u (VP velocity at x̄ = c x),
  2. takes the Euler–Maruyama step of the VP reverse SDE from s_i to s_{i+1} (g evaluated at the VP time s_i),
  3. maps back x_next = x̄_next / c_{s_{i+1}}, a sample at the next linear time σ_{i+1}.
All three are linear in (x, u, z), so one step is `a·x + b·u + n·z` with three scalars per step, precomputed in
`set_timesteps` (float64) — the step itself is a few fused tensor ops and no host-device syncs.

The VP schedule covers s ∈ [0, 1], i.e. linear times up to t_{s=1} ≈ 0.99347 (β 0.1…20); pipeline grid points
above that (the pure-noise start σ = 1) are clamped to it, so the first model call happens at t ≈ 993.47 instead
of 1000 and an equal neighbour gives a zero-length step. The pipeline's initial noise N(0, I) is taken as the state
at that first time; its exact marginal there is N(0.0065·x₀, 0.987 I), a 0.66 % scale mismatch, below the
discretisation error of any practical grid. (The released code draws N(0, I) directly in the VP frame at s = 1, which
is exact up to the 0.0066·x₀ term; a scheduler cannot, since the pipeline calls the model on its own initial latents
before the scheduler sees them.)
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging

from .interpolants import (
    DIFFUSION_COEFFICIENTS,
    INTERPOLANTS,
    LinearInterpolant,
    StepCoefficients,
    VPInterpolant,
    diffusion_coefficient,
    frame_step_coefficients,
    get_interpolant,
    paper_time_grid,
    vp_to_linear_time,
)
from .stepping import apply_step

__all__ = ["FlowSDEScheduler", "FlowSDESchedulerOutput", "SchedulerMixin"]

SAMPLERS = ("sde", "ode")
TIME_GRIDS = ("auto", "pipeline", "paper", "paper_code", "uniform")
#: What `time_grid="auto"` means for each sampling interpolant (BENCHMARKS.md, "Marginal error": the grid closest to
#: the exact marginals for each sampler).
AUTO_TIME_GRID = {"linear": "pipeline", "vp": "uniform"}
FINAL_STEPS = ("auto", "integrate", "tweedie")

logger = logging.get_logger(__name__)

# FlowMatchEulerDiscreteScheduler's own config keys (diffusers 0.42); they define the "pipeline" grid.
_EULER_KEYS = (
    "num_train_timesteps",
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "invert_sigmas",
    "shift_terminal",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "time_shift_type",
    "stochastic_sampling",
)


@dataclass
class FlowSDESchedulerOutput(BaseOutput):
    """
    Output class for the scheduler's `step` function.

    Args:
        prev_sample (`torch.Tensor` of the shape of the latents):
            The sample at the next (less noisy) time of the grid, in the model's (linear) frame; the next model input.
        pred_original_sample (`torch.Tensor` of the shape of the latents):
            Tweedie's estimate x̂₀ = E[x₀ | x_t] from the current model output (for rewards and previews).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _check_number(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}.")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"`{name}` must be {'>' if strict else '>='} {minimum}, got {value}.")
    return value


class FlowSDEScheduler(SchedulerMixin, ConfigMixin):
    """
    Flow-model sampler for the reverse SDE that keeps the flow ODE's marginals (Kim et al. 2025, "Inference-time
    scaling for flow models via stochastic generation and rollover budget forcing"), optionally in the
    variance-preserving (VP) interpolant, computed from the velocity of a linear-interpolant model (FLUX, SD3).

    A drop-in for [`FlowMatchEulerDiscreteScheduler`]:
    `pipe.scheduler = FlowSDEScheduler.from_config(pipe.scheduler.config, sampler="sde", interpolant="vp")`.
    Latents stay in the model's linear frame; the conversion happens inside [`~FlowSDEScheduler.step`] (see the
    module docstring for why the pipeline's own transformer call is the right one). Each step also returns the
    Tweedie estimate x̂₀ (`pred_original_sample`), kept in `scheduler.pred_original_sample` for callbacks.

    Noise comes from the scheduler's own generator ([`~FlowSDEScheduler.set_generator`]; pipelines pass none to
    `step`), else from torch's global RNG, so `torch.manual_seed` makes a run reproducible.

    This model inherits from [`SchedulerMixin`] and [`ConfigMixin`].

    Args:
        num_train_timesteps (`int`, defaults to 1000):
            Timestep scale of the model: `timesteps = sigmas * num_train_timesteps`.
        shift (`float`, defaults to 1.0), use_dynamic_shifting (`bool`, defaults to False),
        base_shift (`float`, defaults to 0.5), max_shift (`float`, defaults to 1.15),
        base_image_seq_len (`int`, defaults to 256), max_image_seq_len (`int`, defaults to 4096),
        shift_terminal (`float`, *optional*), use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas
        (`bool`, defaults to False), time_shift_type (`str`, defaults to "exponential"):
            As in [`FlowMatchEulerDiscreteScheduler`]; they shape the `time_grid="pipeline"` grid, which is computed
            by FlowMatchEulerDiscreteScheduler itself, so it matches it exactly.
        invert_sigmas (`bool`, defaults to False):
            Accepted for config compatibility; `True` (Mochi's reversed time) is not supported.
        stochastic_sampling (`bool`, defaults to False):
            Accepted for config compatibility; `True` (FlowMatchEuler's re-noising from x̂₀, which does not keep the
            marginals) is rejected: use `sampler="sde"`.
        sampler (`str`, defaults to `"sde"`):
            `"sde"`: Euler–Maruyama on the reverse SDE x_{t−Δ} = x_t − Δ (u − ½ g² ∇log p_t) + g √Δ z.
            `"ode"`: Euler on the probability-flow ODE (g = 0). With `interpolant="linear"` (and the default grid,
            which is then `"pipeline"`) this is FlowMatchEulerDiscreteScheduler, bit for bit.
        interpolant (`str`, defaults to `"vp"`):
            The interpolant whose frame and time the sampler steps in: `"linear"` (the model's own) or `"vp"`.
        diffusion_coefficient (`str`, defaults to `"square"`):
            Shape of g as a function of the sampling interpolant's time τ: `"square"` = norm · τ² (the paper's),
            `"linear"` = norm · τ, `"constant"` = norm, `"sigma"` = norm · σ_τ (the released code's default).
        diffusion_norm (`float`, defaults to 3.0):
            Scale of g, ≥ 0 (the paper compares 1, 3, 5: fidelity vs diversity). 0 gives the ODE.
        vp_beta_min (`float`, defaults to 0.1), vp_beta_max (`float`, defaults to 20.0):
            Linear β schedule of the VP interpolant (0 ≤ β_min < β_max).
        time_grid (`str`, defaults to `"auto"`):
            `"auto"`: follow the sampling interpolant — `"pipeline"` for `"linear"` (so `sampler="ode"` is
            FlowMatchEuler), `"uniform"` for `"vp"` (of the grids measured, the closest to the exact marginals for the
            VP-SDE at 10–200 steps: BENCHMARKS.md, "Marginal error"). `"pipeline"`: the sigmas the pipeline asks for
            (its step count, shift and `mu`), mapped to the sampling interpolant's time by equal SNR; for the VP-SDE
            it takes its first steps in VP time from s = 1 to 0.64 (10 steps) and over-disperses.
            `"uniform"`: equal steps in the sampling interpolant's own time, 1 → 0 (VP: s_i = 1 − i/N). `"paper"`:
            the VP grid of the paper's released code, r_i = √(1 − (i/N)²) with N = the pipeline's step count, as VP
            times (for `interpolant="linear"`: the linear times of equal SNR, the same noise levels).
            `"paper_code"`: the same r_i used directly as times of the sampling interpolant (what the released code
            does for its linear SDE; identical to `"paper"` for VP). Except for `"pipeline"`, the pipeline's shift
            and `mu` are ignored and only its step count is used.
        final_step (`str`, defaults to `"auto"`):
            `"integrate"`: the last step integrates to t = 0. `"tweedie"`: the last step returns Tweedie's x̂₀ at the
            last non-zero time instead (what the released code outputs). `"auto"`: `"tweedie"` on the paper grids,
            whose last step is long (VP time 0.436 → 0 at N = 10: an SDE step would add visible noise at t = 0), and
            `"integrate"` on the others.
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
        sampler: str = "sde",
        interpolant: str = "vp",
        diffusion_coefficient: str = "square",
        diffusion_norm: float = 3.0,
        vp_beta_min: float = 0.1,
        vp_beta_max: float = 20.0,
        time_grid: str = "auto",
        final_step: str = "auto",
    ):
        _check_choice("sampler", sampler, SAMPLERS)
        _check_choice("interpolant", interpolant, INTERPOLANTS)
        _check_choice("diffusion_coefficient", diffusion_coefficient, DIFFUSION_COEFFICIENTS)
        _check_choice("time_grid", time_grid, TIME_GRIDS)
        _check_choice("final_step", final_step, FINAL_STEPS)
        _check_number("diffusion_norm", diffusion_norm, minimum=0.0)
        beta_min = _check_number("vp_beta_min", vp_beta_min, minimum=0.0)
        beta_max = _check_number("vp_beta_max", vp_beta_max)
        if beta_min >= beta_max:
            raise ValueError(f"`vp_beta_min` ({beta_min}) must be < `vp_beta_max` ({beta_max}).")
        _check_number("shift", shift, minimum=0.0, strict=True)
        if (
            isinstance(num_train_timesteps, bool)
            or not isinstance(num_train_timesteps, int)
            or num_train_timesteps < 1
        ):
            raise ValueError(f"`num_train_timesteps` must be an int >= 1, got {num_train_timesteps!r}.")
        if invert_sigmas:
            raise ValueError(
                "`invert_sigmas=True` (a model trained with reversed time, e.g. Mochi) is not supported by "
                "FlowSDEScheduler; set `invert_sigmas=False`."
            )
        if stochastic_sampling:
            raise ValueError(
                "`stochastic_sampling=True` is FlowMatchEulerDiscreteScheduler's re-noising sampler, which does not "
                "keep the flow's marginals; FlowSDEScheduler replaces it with `sampler='sde'`. Set "
                "`stochastic_sampling=False`."
            )

        # The pipeline grid (shift, dynamic shift, karras, ...) is FlowMatchEuler's own, computed by it.
        self._euler = FlowMatchEulerDiscreteScheduler(
            **{k: v for k, v in self.config.items() if k in _EULER_KEYS}
        )
        self._model_interpolant = LinearInterpolant()
        self._sampling_interpolant = get_interpolant(interpolant, beta_min, beta_max)

        self.timesteps = self._euler.timesteps
        self.sigmas = self._euler.sigmas
        self.sampling_times: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._coefficients: list[StepCoefficients] = []
        self._euler_exact = False
        self._step_index = None
        self._begin_index = None
        self._generator: torch.Generator | list[torch.Generator] | None = None
        self._pred_original_sample: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs: bool = False, **kwargs):
        """
        Instantiates the scheduler from a config (e.g. `pipe.scheduler.config`) with keyword overrides, as
        [`ConfigMixin.from_config`], except that an override which is not a config key is not silently dropped: one
        that looks like a misspelt key (`diffusion_nrom`) raises, any other is named in a warning (loaders may pass
        their own keywords through here).

        Args:
            config (`dict` or `FrozenDict`, *optional*):
                The config to start from; keys this scheduler does not know are ignored (FlowMatchEuler's all known).
            return_unused_kwargs (`bool`, defaults to `False`):
                Also return the overrides that were not consumed.
            kwargs:
                Config overrides, e.g. `sampler="sde"`, `interpolant="vp"`, `diffusion_norm=3.0`.

        Raises:
            TypeError: an override that is a close misspelling of a config key.
        """
        scheduler, unused = super().from_config(config, return_unused_kwargs=True, **kwargs)
        if unused:
            keys = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
            for name in unused:
                match = difflib.get_close_matches(name, keys, n=1, cutoff=0.75)
                if match:
                    raise TypeError(
                        f"`{name}` is not a config key of {cls.__name__}; did you mean `{match[0]}`?"
                    )
            logger.warning(
                f"{cls.__name__}.from_config ignored keyword arguments that are not config keys: {sorted(unused)}"
            )
        return (scheduler, unused) if return_unused_kwargs else scheduler

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def shift(self) -> float:
        """The value used for shifting the pipeline grid."""
        return self._euler.shift

    @property
    def sigma_min(self) -> float:
        return self._euler.sigma_min

    @property
    def sigma_max(self) -> float:
        return self._euler.sigma_max

    @property
    def step_index(self) -> int | None:
        """The index counter for current timestep. It will increase 1 after each scheduler step."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index for the first timestep. It should be set from pipeline with `set_begin_index` method."""
        return self._begin_index

    @property
    def pred_original_sample(self) -> torch.Tensor | None:
        """Tweedie's x̂₀ from the latest `step()` (in the model's dtype), for `callback_on_step_end`; `None` before."""
        return self._pred_original_sample

    @property
    def generator(self) -> torch.Generator | list[torch.Generator] | None:
        """The generator the SDE noise is drawn from (`None`: torch's global RNG)."""
        return self._generator

    @property
    def time_grid(self) -> str:
        """The grid in use: `config.time_grid`, with `"auto"` resolved for the sampling interpolant
        (`"pipeline"` for linear, `"uniform"` for VP)."""
        grid = self.config.time_grid
        return AUTO_TIME_GRID[self.config.interpolant] if grid == "auto" else grid

    @property
    def sampling_interpolant(self):
        """The [`~diffusers_ttsplugin.interpolants.Interpolant`] the steps are taken in."""
        return self._sampling_interpolant

    # Copied from diffusers.schedulers.scheduling_dpmsolver_multistep.DPMSolverMultistepScheduler.set_begin_index
    def set_begin_index(self, begin_index: int = 0):
        """
        Sets the begin index for the scheduler. This function should be run from pipeline before the inference.

        Args:
            begin_index (`int`, defaults to `0`):
                The begin index for the scheduler.
        """
        self._begin_index = begin_index

    def set_shift(self, shift: float):
        """
        Sets the shift value for the pipeline grid.

        Args:
            shift (`float`):
                The shift value to be set.
        """
        self._euler.set_shift(shift)

    def set_generator(self, generator: torch.Generator | list[torch.Generator] | None) -> None:
        """
        Seeds the SDE noise: every later `step()` draws from `generator` (pipelines pass none to `step`).

        Args:
            generator (`torch.Generator`, a list of them, or `None`):
                One generator for the whole batch, or one per batch row (row i's noise then depends only on
                generator i, so a particle's path does not depend on the batch it runs in). `None` returns to torch's
                global RNG. A generator on the CPU also serves latents on another device (the noise is drawn on
                the CPU and copied).
        """
        if generator is None or isinstance(generator, torch.Generator):
            self._generator = generator
            return
        if (
            isinstance(generator, list | tuple)
            and generator
            and all(isinstance(g, torch.Generator) for g in generator)
        ):
            self._generator = list(generator)
            return
        raise TypeError(
            f"`generator` must be a torch.Generator, a non-empty list of them, or None; got {type(generator).__name__}."
        )

    # -- grid -------------------------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ):
        """
        Sets the grid used for sampling (to be run before inference). Same signature as
        [`FlowMatchEulerDiscreteScheduler.set_timesteps`].

        Args:
            num_inference_steps (`int`, *optional*):
                The number of model evaluations (steps).
            device (`str` or `torch.device`, *optional*):
                The device to which `timesteps` and `sigmas` are moved.
            sigmas (`list[float]`, *optional*):
                Custom linear times for the `"pipeline"` grid (FluxPipeline passes `linspace(1, 1/N, N)`); with a
                paper grid only their count is used.
            mu (`float`, *optional*):
                Resolution-dependent shift of the `"pipeline"` grid (`use_dynamic_shifting`).
            timesteps (`list[float]`, *optional*):
                Custom timesteps for the `"pipeline"` grid; with a paper grid only their count is used.
        """
        grid = self.time_grid
        if grid == "pipeline":
            self._euler.set_timesteps(
                num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps
            )
            model_sigmas = self._euler.sigmas.to(dtype=torch.float32)
            model_timesteps = self._euler.timesteps
            num_steps = len(model_timesteps)
        else:
            if num_inference_steps is None:
                if sigmas is None and timesteps is None:
                    raise ValueError(
                        "Pass `num_inference_steps`, `sigmas` or `timesteps` to `set_timesteps`."
                    )
                num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int | np.integer):
                raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}.")
            num_steps = int(num_inference_steps)
            model_sigmas = model_timesteps = None
        if num_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_steps}.")

        model, sampler = self._model_interpolant, self._sampling_interpolant
        is_vp = isinstance(sampler, VPInterpolant)
        if grid == "pipeline":
            linear = model_sigmas.detach().cpu().to(torch.float64)
            if is_vp:
                # Equal-SNR VP times, clamped to the schedule's end s = 1 (linear t ≈ 0.99347 for β 0.1…20).
                s = torch.clamp(sampler.time_from_snr((1.0 - linear) / linear), max=1.0)
                t_end = float(vp_to_linear_time(1.0, sampler))
                clamped = linear > t_end
                linear = torch.where(clamped, torch.full_like(linear, t_end), linear)
                if clamped.any():
                    dev_clamped = clamped.to(model_sigmas.device)
                    model_sigmas = torch.where(dev_clamped, linear.to(model_sigmas), model_sigmas)
                    model_timesteps = torch.where(
                        dev_clamped[:-1], model_sigmas[:-1] * self.config.num_train_timesteps, model_timesteps
                    )
            else:
                s = linear
        elif grid == "uniform":  # equal steps in the sampling interpolant's own time, 1 -> 0
            s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
            linear = vp_to_linear_time(s, sampler) if is_vp else s
            model_sigmas = linear.to(torch.float32).to(device)
            model_timesteps = model_sigmas[:-1] * self.config.num_train_timesteps
        else:
            r = paper_time_grid(num_steps)
            if grid == "paper_code" or is_vp:
                s = r
            else:  # linear sampler on the paper's VP noise levels: equal-SNR linear times
                s = vp_to_linear_time(r, VPInterpolant(self.config.vp_beta_min, self.config.vp_beta_max))
            linear = vp_to_linear_time(s, sampler) if is_vp else s
            model_sigmas = linear.to(torch.float32).to(device)
            model_timesteps = model_sigmas[:-1] * self.config.num_train_timesteps

        g_kind = self.config.diffusion_coefficient
        if self.config.sampler == "ode":
            g = torch.zeros_like(s[:-1])
        else:
            g = diffusion_coefficient(s[:-1], g_kind, float(self.config.diffusion_norm), sampler)
        coefs = frame_step_coefficients(s[:-1], s[1:], g, model, sampler)
        # Tweedie in the model frame at the (float32) linear time the state is at.
        sig = model_sigmas.detach().cpu().to(torch.float64)[:-1]
        self._coefficients = [
            StepCoefficients(
                sample=float(coefs.sample[i]),
                velocity=float(coefs.velocity[i]),
                noise=float(coefs.noise[i]),
                x0_sample=1.0,
                x0_velocity=-float(sig[i]),
            )
            for i in range(num_steps)
        ]
        if not all(math.isfinite(v) for c in self._coefficients for v in (c.sample, c.velocity, c.noise)):
            raise ValueError(
                "The grid gives non-finite step coefficients (a diffusion coefficient that blows up at a grid time?)."
            )
        final_step = self.config.final_step
        if final_step == "auto":
            final_step = "tweedie" if grid in ("paper", "paper_code") else "integrate"
        if final_step == "tweedie":  # the last step returns x̂₀ at the last non-zero time
            last = self._coefficients[-1]
            self._coefficients[-1] = StepCoefficients(
                sample=last.x0_sample,
                velocity=last.x0_velocity,
                noise=0.0,
                x0_sample=last.x0_sample,
                x0_velocity=last.x0_velocity,
            )
        self._euler_exact = (
            self.config.sampler == "ode" and not is_vp and grid == "pipeline" and final_step == "integrate"
        )

        self.num_inference_steps = num_steps
        self.timesteps = model_timesteps
        self.sigmas = model_sigmas
        self.sampling_times = s.to(torch.float64)
        self._step_index = None
        self._begin_index = None
        self._pred_original_sample = None

    def step_coefficients(self, step_index: int | None = None) -> StepCoefficients:
        """
        The step at `step_index` (default: the current one) as scalars in the model frame:
        `prev = sample * c.sample + model_output * c.velocity + c.noise * z` and
        `x̂₀ = sample * c.x0_sample + model_output * c.x0_velocity` (when the final step is Tweedie, the last step's
        coefficients are x̂₀'s). For search code that proposes several next states from one model output.
        """
        if not self._coefficients:
            raise ValueError("Call `set_timesteps` before `step_coefficients`.")
        i = self._step_index if step_index is None else step_index
        if i is None:
            i = self._begin_index or 0
        return self._coefficients[i]

    # Copied from diffusers.schedulers.scheduling_flow_match_euler_discrete.FlowMatchEulerDiscreteScheduler.index_for_timestep
    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """
        Get the index for the given timestep.

        Args:
            timestep (`float` or `torch.Tensor`):
                The timestep to find the index for.
            schedule_timesteps (`torch.Tensor`, *optional*):
                The schedule timesteps to validate against. If `None`, the scheduler's timesteps are used.

        Returns:
            `int`:
                The index of the timestep.
        """
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps

        indices = (schedule_timesteps == timestep).nonzero()

        # The sigma index that is taken for the **very** first `step`
        # is always the second index (or the last index if there is only 1)
        # This way we can ensure we don't accidentally skip a sigma in
        # case we start in the middle of the denoising schedule (e.g. for image-to-image)
        pos = 1 if len(indices) > 1 else 0

        return indices[pos].item()

    # Copied from diffusers.schedulers.scheduling_flow_match_euler_discrete.FlowMatchEulerDiscreteScheduler._init_step_index
    def _init_step_index(self, timestep):
        if self.begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    # Copied from diffusers.schedulers.scheduling_flow_match_euler_discrete.FlowMatchEulerDiscreteScheduler.scale_noise
    def scale_noise(
        self,
        sample: torch.FloatTensor,
        timestep: float | torch.FloatTensor,
        noise: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """
        Forward process in flow-matching (the linear frame): `sigma * noise + (1 - sigma) * sample`.

        Args:
            sample (`torch.FloatTensor`):
                The input sample.
            timestep (`torch.FloatTensor`):
                The current timestep in the diffusion chain.
            noise (`torch.FloatTensor`):
                The noise tensor.

        Returns:
            `torch.FloatTensor`:
                A scaled input sample.
        """
        # Make sure sigmas and timesteps have the same device and dtype as original_samples
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)

        if sample.device.type == "mps" and torch.is_floating_point(timestep):
            # mps does not support float64
            schedule_timesteps = self.timesteps.to(sample.device, dtype=torch.float32)
            timestep = timestep.to(sample.device, dtype=torch.float32)
        else:
            schedule_timesteps = self.timesteps.to(sample.device)
            timestep = timestep.to(sample.device)

        # self.begin_index is None when scheduler is used for training, or pipeline does not implement set_begin_index
        if self.begin_index is None:
            step_indices = [self.index_for_timestep(t, schedule_timesteps) for t in timestep]
        elif self.step_index is not None:
            # add_noise is called after first denoising step (for inpainting)
            step_indices = [self.step_index] * timestep.shape[0]
        else:
            # add noise is called before first denoising step to create initial latent(img2img)
            step_indices = [self.begin_index] * timestep.shape[0]

        sigma = sigmas[step_indices].flatten()
        while len(sigma.shape) < len(sample.shape):
            sigma = sigma.unsqueeze(-1)

        sample = sigma * noise + (1.0 - sigma) * sample

        return sample

    # -- step -------------------------------------------------------------------------------------------------
    @staticmethod
    def _x0(sample32: torch.Tensor, model_output: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
        return apply_step(sample32, model_output, c.x0_sample, c.x0_velocity)

    def tweedie(
        self, model_output: torch.Tensor, sample: torch.Tensor, step_index: int | None = None
    ) -> torch.Tensor:
        """
        Tweedie's x̂₀ = E[x₀ | x_t] = x − σ_i u at grid entry `step_index` (default: the current one), without
        stepping: for scoring a proposal with the model output at its own time.
        """
        c = self.step_coefficients(step_index)
        return self._x0(sample.to(torch.float32), model_output, c).to(model_output.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
        noise: torch.Tensor | None = None,
    ) -> FlowSDESchedulerOutput | tuple:
        """
        One step of the reverse SDE (or ODE) from the current grid time to the next, in the model's frame.

        Args:
            model_output (`torch.Tensor`):
                The model's velocity u at (`sample`, `timestep`).
            timestep (`float` or `torch.Tensor`):
                The current entry of `scheduler.timesteps` (used only to locate the step when no begin index is set).
            sample (`torch.Tensor`):
                The current latents x (linear frame).
            s_churn, s_tmin, s_tmax, s_noise (`float`):
                Accepted for signature compatibility with FlowMatchEulerDiscreteScheduler; unused (as there).
            generator (`torch.Generator` or list, *optional*):
                Overrides the scheduler's own generator for this step's noise.
            per_token_timesteps (`torch.Tensor`, *optional*):
                Not supported (must be `None`).
            return_dict (`bool`, defaults to `True`):
                Return a [`FlowSDESchedulerOutput`] or the tuple `(prev_sample, pred_original_sample)`.
            noise (`torch.Tensor`, *optional*):
                The standard normal z to use instead of drawing one (shape of `sample`).

        Returns:
            [`FlowSDESchedulerOutput`] or `tuple`: the next latents and Tweedie's x̂₀, both in `model_output`'s dtype.
        """
        if isinstance(timestep, int) or (
            isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()
        ):
            raise ValueError(
                "Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to `FlowSDEScheduler.step()` "
                "is not supported. Make sure to pass one of the `scheduler.timesteps` as a timestep."
            )
        if per_token_timesteps is not None:
            raise ValueError("`per_token_timesteps` is not supported by FlowSDEScheduler.")
        if not self._coefficients:
            raise ValueError("Call `set_timesteps` before `step`.")
        if noise is not None and noise.shape != sample.shape:
            raise ValueError(
                f"`noise` must have the shape of `sample` {tuple(sample.shape)}, got {tuple(noise.shape)}."
            )
        if model_output.shape != sample.shape:
            raise ValueError(
                f"`model_output` {tuple(model_output.shape)} and `sample` {tuple(sample.shape)} must have the same shape."
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError(
                f"`step()` was called {i + 1} times on a grid of {self.num_inference_steps} steps."
            )
        c = self._coefficients[i]

        # Upcast to avoid precision issues when computing prev_sample (as FlowMatchEuler does).
        sample = sample.to(torch.float32)
        x0 = self._x0(sample, model_output, c)
        if self._euler_exact:
            # FlowMatchEulerDiscreteScheduler's exact expression, so the ODE reproduces it bit for bit.
            dt = self.sigmas[i + 1] - self.sigmas[i]
            prev_sample = sample + dt * model_output
        else:  # a·x + b·u + n·z: the shared step (fused Triton kernel on CUDA), one allocation
            prev_sample = apply_step(
                sample,
                model_output,
                c.sample,
                c.velocity,
                c.noise,
                noise=noise,
                generator=self._generator if generator is None else generator,
            )

        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        x0 = x0.to(model_output.dtype)
        self._pred_original_sample = x0

        if not return_dict:
            return (prev_sample, x0)
        return FlowSDESchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
