"""`InferenceScaler`: particle search over a flow pipeline with a reward and an exact NFE budget.

Methods (Kim et al. 2025, "Inference-time scaling for flow models via stochastic generation and rollover budget
forcing"; settings at 500 NFE / 10 steps in parentheses, counts scale with the budget — see
[`~diffusers_ttsplugin.search.planning.plan_search`]):

- "bon"  best-of-N: N full trajectories (N = 50), the best final reward wins. Linear ODE by default.
- "sop"  search over paths (Ma et al. 2025): C chains (2) solved to a seed level, then repeatedly forward-noised f
  grid steps and re-solved f + 1 steps back with K candidates per chain, keeping the best. Linear ODE by default.
- "smc"  sequential Monte Carlo: N particles (50) with weights exp((r_t − r_{t−1}) / λ), resampled when
  ESS < threshold · N (0.5, multinomial as in the released code).
- "svdd" C chains (2), K SDE proposals per chain per step (25), the best proposal continues (argmax).
- "code" like SVDD, but each candidate runs a block of L steps (2) before the selection.
- "rbf"  Rollover Budget Forcing: C chains (2), each started from the best of K₀ initial noises (25), drawing one
  proposal at a time per step under a quota, accepting the first that beats the running best and rolling the unused
  quota over; the last step spends the rest.

Particle methods default to the VP-SDE (the paper's best), BoN and SoP to the linear ODE; `sampler`/`interpolant`
override that. Every proposal is scored on the decoded Tweedie estimate x̂₀ at its time; the returned sample is the
Tweedie estimate at the last non-zero time (`final_step="tweedie"`, the released code's output) or the result of
integrating the last step to t = 0 (`final_step="integrate"`, rescored).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..rewards import RewardFn, check_rewards, reward_input
from ..stepping import apply_step, draw_noise
from .adapters import FlowAdapter, adapter_for
from .budget import NFELedger
from .distributed import ParticleComm, RowLayout, balanced_owners
from .planning import METHODS, SearchPlan, plan_search
from .rbf import RolloverBudgetForcing
from .smc import SMCState
from .trace import SearchTrace, StepRecord

FINAL_STEPS = ("tweedie", "integrate")
ODE_METHODS = ("bon", "sop")


def _comparable(value: Any) -> Any:
    """A call option as the ranks compare it: tensors by shape and dtype (each rank may hold them on its own
    device), everything else by value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype))
    return value


@dataclass
class SearchResult:
    """What [`InferenceScaler`] returns (one entry per prompt).

    Attributes:
        images: The chosen image of each prompt (`output_type`: list of PIL images, numpy `[B, H, W, 3]`, tensor
            `[B, 3, H, W]` in [0, 1], or latents).
        reward (`torch.Tensor` `[B]`): The chosen sample's reward.
        nfe (`torch.Tensor` `[B]`, int64): NFE each prompt used (never more than `nfe_budget`).
        trace ([`SearchTrace`]): Per-step records (times, proposal rewards, accepted / rolled-over budget,
            resampling events), JSON-serialisable.
        latents (`torch.Tensor` `[B, ...]`): The chosen samples in the model's latent frame (float32).
        transformer_rows (`int`): Transformer rows run (NFE × 2 with classifier-free guidance).
    """

    images: Any
    reward: torch.Tensor
    nfe: torch.Tensor
    trace: SearchTrace
    latents: torch.Tensor
    transformer_rows: int = 0


class InferenceScaler:
    r"""Particle search over a flow pipeline (FLUX, SD3, any velocity function) for a reward, within an NFE budget.

    One NFE is one velocity evaluation of one particle; with classifier-free guidance the guided velocity (two
    transformer rows) still counts as one NFE. Every method plans its particle counts to fit `nfe_budget` per prompt
    and never exceeds it; the result reports what was used. Reward calls and decoding are not counted.

    Args:
        pipe: A `FluxPipeline`, a `StableDiffusion3Pipeline` (or subclass), a
            [`~diffusers_ttsplugin.search.adapters.FlowAdapter`], or any object with `velocity(x, t)` and
            `latent_shape` (e.g. `diffusers_ttsplugin.toy.AnalyticFlow`).
        reward (`Callable`): `reward(images, prompts) -> tensor[N]`, higher is better; `images` float
            `[N, 3, H, W]` in [0, 1] (or latents for a reward with `input = "latent"`). See
            `diffusers_ttsplugin.rewards` (built-ins, non-finite values).
        method (`str`, defaults to "rbf"): "bon", "sop", "smc", "code", "svdd" or "rbf".
        nfe_budget (`int`, defaults to 500): NFE per prompt.
        num_steps (`int`, defaults to 10): Grid intervals S; velocities are evaluated at the S non-zero grid times,
            proposals are scored at S − 1 of them.
        num_particles (`int`, *optional*): BoN / SMC particles (default ⌊budget / S⌋; paper 50).
        num_chains (`int`, *optional*): Chains of SVDD, CoDe, SoP, RBF (default 2, fewer if the budget is tiny).
        num_proposals (`int`, *optional*): Candidates per chain per step (SVDD, CoDe; default ⌊budget / (S · C)⌋,
            paper 25) or per SoP iteration (default: the most that fit).
        init_particles (`int`, *optional*): Best-of-K initial noise per chain (SVDD, CoDe, RBF; default
            ⌊budget / (S · C)⌋, paper 25), paid from the budget.
        temperature (`float`, *optional*): SMC's λ in exp((r_t − r_{t−1}) / λ) (default 0.1; scale it with your
            reward's range).
        ess_threshold (`float`, *optional*): SMC resamples when ESS < threshold · N (default 0.5).
        resampling (`str`, *optional*): SMC's scheme: "multinomial" (default, the released code's), "systematic",
            "stratified", "residual".
        potential (`str`, *optional*): SMC's potential: "difference" (default, exp((r_t − r_{t−1}) / λ), the
            paper's), "max" or "sum" (FK steering's); see [`~diffusers_ttsplugin.search.smc`].
        initial_weights (`str`, *optional*): SMC's start: "uniform" (default, the paper's) or "reward"
            (exp(r₀ / λ): the released code's and FK steering's).
        tempering (`str`, *optional*): SMC's λ schedule λ_k = λ / β_k: "none" (default), "linear" or
            "exponential" (DAS); `tempering_gamma` (`float`, *optional*) its rate (default: β reaches 1 at the
            last step).
        block_size (`int`, *optional*): CoDe's steps per block L (default 2).
        forward_steps (`int`, *optional*): SoP's forward-noising distance in grid steps (default ⌊(S − 1) / 3⌋).
        rollover (`bool`, *optional*): RBF carries unused quota to the next step (default True).
        final_step (`str`, defaults to "tweedie"): "tweedie" returns x̂₀ at the last non-zero time (the paper's
            released behaviour, and exactly the sample that was scored); "integrate" takes the last step to t = 0
            (no extra NFE) and rescores.
        sampler (`str`, *optional*): "sde" or "ode" (default: "ode" for bon/sop, "sde" otherwise).
        interpolant (`str`, *optional*): "linear" or "vp" (default: "linear" for bon/sop, "vp" otherwise).
        diffusion_coefficient (`str`, defaults to "square"), diffusion_norm (`float`, defaults to 3.0),
        vp_beta_min (`float`, defaults to 0.1), vp_beta_max (`float`, defaults to 20.0),
        time_grid (`str`, defaults to "auto"): passed to [`~diffusers_ttsplugin.FlowSDEScheduler`], which
            computes the grid and the step coefficients ("auto" = follow the sampling interpolant: the pipeline's
            own sigmas and shift for linear, equal steps in VP time for VP; "pipeline"; "uniform"; "paper" = the
            released code's VP grid).
        max_batch_size (`int`, *optional*): Most transformer rows (and decoded images) per call.
        nonfinite_rewards (`str`, defaults to "raise"): "raise" on NaN/+inf rewards, or "reject" (NaN → −inf,
            never chosen). +inf always raises; a prompt whose chosen sample has no finite reward raises.
        callback (`Callable`, *optional*): `callback(scaler, record)` after every [`StepRecord`].

    Example:
        ```py
        >>> from diffusers_ttsplugin import InferenceScaler
        >>> from diffusers_ttsplugin.rewards import JPEGCompressibility
        >>> scaler = InferenceScaler(pipe, JPEGCompressibility(), method="rbf", nfe_budget=500)
        >>> result = scaler("a photo of a cat", height=1024, width=1024, guidance_scale=3.5,
        ...                 generator=torch.Generator().manual_seed(0))
        >>> result.images[0], result.reward, result.nfe
        ```
    """

    def __init__(
        self,
        pipe: Any,
        reward: RewardFn,
        method: str = "rbf",
        nfe_budget: int = 500,
        num_steps: int = 10,
        *,
        num_particles: int | None = None,
        num_chains: int | None = None,
        num_proposals: int | None = None,
        init_particles: int | None = None,
        temperature: float | None = None,
        ess_threshold: float | None = None,
        resampling: str | None = None,
        potential: str | None = None,
        initial_weights: str | None = None,
        tempering: str | None = None,
        tempering_gamma: float | None = None,
        block_size: int | None = None,
        forward_steps: int | None = None,
        rollover: bool | None = None,
        final_step: str = "tweedie",
        sampler: str | None = None,
        interpolant: str | None = None,
        diffusion_coefficient: str = "square",
        diffusion_norm: float = 3.0,
        vp_beta_min: float = 0.1,
        vp_beta_max: float = 20.0,
        time_grid: str = "auto",
        max_batch_size: int | None = None,
        nonfinite_rewards: str = "raise",
        callback: Callable[[InferenceScaler, StepRecord], None] | None = None,
    ):
        if not callable(reward):
            raise TypeError(
                f"`reward` must be callable as reward(images, prompts), got {type(reward).__name__}"
            )
        self.plan: SearchPlan = plan_search(
            method,
            nfe_budget,
            num_steps,
            num_particles=num_particles,
            num_chains=num_chains,
            num_proposals=num_proposals,
            init_particles=init_particles,
            temperature=temperature,
            ess_threshold=ess_threshold,
            resampling=resampling,
            potential=potential,
            initial_weights=initial_weights,
            tempering=tempering,
            tempering_gamma=tempering_gamma,
            block_size=block_size,
            forward_steps=forward_steps,
            rollover=rollover,
        )
        if final_step not in FINAL_STEPS:
            raise ValueError(f"`final_step` must be one of {FINAL_STEPS}, got {final_step!r}")
        if nonfinite_rewards not in ("raise", "reject"):
            raise ValueError(f"`nonfinite_rewards` must be 'raise' or 'reject', got {nonfinite_rewards!r}")
        if callback is not None and not callable(callback):
            raise TypeError("`callback` must be callable as callback(scaler, record)")
        self.adapter: FlowAdapter = adapter_for(pipe, max_batch_size=max_batch_size)
        self.reward = reward
        self.reward_input = reward_input(reward)
        self.method = method
        self.nfe_budget = int(nfe_budget)
        self.num_steps = int(num_steps)
        self.final_step = final_step
        self.nonfinite_rewards = nonfinite_rewards
        self.callback = callback
        self.scheduler_options = {
            "sampler": sampler or ("ode" if method in ODE_METHODS else "sde"),
            "interpolant": interpolant or ("linear" if method in ODE_METHODS else "vp"),
            "diffusion_coefficient": diffusion_coefficient,
            "diffusion_norm": diffusion_norm,
            "vp_beta_min": vp_beta_min,
            "vp_beta_max": vp_beta_max,
            "time_grid": time_grid,
            "final_step": "integrate",
        }
        # Validates the sampler options now (bad values raise here, not mid-search).
        self._make_scheduler()
        self._progress_bar_config: dict = {}
        self._bar = None
        # Bytes this process sent in the last search when sharded over ranks (`distributed.Traffic`), else None.
        self.traffic = None

    # -- configuration --------------------------------------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs) -> None:
        """Options for the tqdm bar (e.g. `disable=True`, `leave=False`), as on diffusers pipelines."""
        self._progress_bar_config = kwargs

    @property
    def settings(self) -> dict:
        """The resolved search settings (plan, sampler, final step), as recorded in the trace."""
        return {
            **self.plan.to_dict(),
            **{k: v for k, v in self.scheduler_options.items() if k != "final_step"},
            "final_step": self.final_step,
            "nonfinite_rewards": self.nonfinite_rewards,
        }

    def _make_scheduler(self):
        from ..scheduling_flow_sde import FlowSDEScheduler

        config = {k: v for k, v in self.adapter.scheduler_config().items() if not k.startswith("_")}
        config.update(self.scheduler_options)
        return FlowSDEScheduler.from_config(config)

    # -- inputs -----------------------------------------------------------------------------------------------------
    def check_inputs(self, prompt, generator, output_type) -> list[str]:
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        else:
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                f"`generator` must be one torch.Generator (or None), got {type(generator).__name__}"
            )
        if output_type not in (None, "pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        return prompts

    # -- the search -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        generator: torch.Generator | None = None,
        output_type: str | None = None,
        num_inference_steps: int | None = None,
        **pipeline_options: Any,
    ) -> SearchResult:
        """Search for each prompt and return the best sample found within the budget.

        Args:
            prompt (`str` or `list[str]`): The prompt(s); each gets its own search and its own budget.
            generator (`torch.Generator`, *optional*): Seeds every random draw (noise, SDE steps, resampling); without
                one the global RNG is used (`torch.manual_seed` then makes runs reproducible).
            output_type (`str`, *optional*): "pil" (pipelines' default), "np", "pt" or "latent".
            num_inference_steps (`int`, *optional*): Must equal `num_steps` if given (the plan depends on it).
            **pipeline_options: The pipeline's own call options (`height`, `width`, `guidance_scale`,
                `negative_prompt`, `max_sequence_length`, ...); unknown ones raise `TypeError`.
        """
        # 1. Check inputs
        prompts = self.check_inputs(prompt, generator, output_type)
        if num_inference_steps is not None and num_inference_steps != self.num_steps:
            raise ValueError(
                f"`num_inference_steps`={num_inference_steps} differs from the scaler's `num_steps`={self.num_steps}; "
                "the NFE plan depends on it, so set `num_steps` when building the InferenceScaler"
            )
        output_type = output_type or self.adapter.default_output_type

        # 2. Encode the prompts once
        self.adapter.prepare(prompts, **pipeline_options)
        self._prompts = prompts
        self._generator = generator
        self._device = self.adapter.device
        # Sharded over the ranks of the default process group, if one is initialized (see search/distributed.py).
        self._comm = ParticleComm.from_default_group()
        if self._comm is not None:
            seed_state = (generator.get_state() if generator is not None else torch.get_rng_state()).tolist()
            self._comm.check_same(
                prompts=prompts,
                settings=self.settings,
                budget=self.nfe_budget,
                steps=self.num_steps,
                generator=hashlib.sha256(bytes(seed_state)).hexdigest(),
                options=[(k, _comparable(v)) for k, v in sorted(pipeline_options.items())],
            )

        # 3. Prepare the grid and step coefficients (FlowSDEScheduler does the interpolant math)
        self._prepare_grid()

        # 4. Search
        self._ledger = NFELedger(len(prompts), self.nfe_budget)
        self._trace = SearchTrace(self.method, self.settings, self.nfe_budget, prompts=list(prompts))
        self._best = [-math.inf] * len(prompts)
        rows_before = self.adapter.transformer_rows
        from tqdm.auto import tqdm

        config = {"desc": f"{self.method} search", "unit": "NFE", **self._progress_bar_config}
        if self._comm is not None and self._comm.rank != 0:
            config["disable"] = True  # one bar per search, on rank 0
        try:
            with tqdm(total=self.nfe_budget * len(prompts), **config) as self._bar:
                latents, rewards = getattr(self, f"_search_{self.method}")()
        finally:
            self._bar = None

        # 5. Outputs
        for b, r in enumerate(rewards.tolist()):
            if not math.isfinite(r):
                raise ValueError(
                    f"no sample of prompt {b} ({prompts[b]!r}) got a finite reward: every candidate was rejected"
                )
        images = self.adapter.decode_batched(latents) if output_type != "latent" else None
        images = self.adapter.postprocess(images, latents, output_type)
        self._trace.nfe = list(self._ledger.used)
        self._trace.final_rewards = rewards.tolist()
        transformer_rows = self.adapter.transformer_rows - rows_before
        self.traffic = None
        if self._comm is not None:
            transformer_rows = self._comm.total(transformer_rows)
            self.traffic = self._comm.traffic
        return SearchResult(
            images=images,
            reward=rewards.cpu(),
            nfe=torch.tensor(self._ledger.used, dtype=torch.int64),
            trace=self._trace,
            latents=latents,
            transformer_rows=transformer_rows,
        )

    # -- building blocks -------------------------------------------------------------------------------------------
    def _prepare_grid(self) -> None:
        scheduler = self._make_scheduler()
        scheduler.set_timesteps(device="cpu", **self.adapter.timestep_kwargs(self.num_steps))
        steps = self.num_steps
        if len(scheduler.sigmas) != steps + 1:
            raise RuntimeError(f"the scheduler built {len(scheduler.sigmas) - 1} steps, expected {steps}")
        coefs = [scheduler.step_coefficients(i) for i in range(steps)]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=self._device)  # noqa: E731
        self._times = scheduler.sigmas.detach().to(torch.float32).cpu()
        self._model_times = self._times.to(self._device)
        self._coef_sample = as_tensor([float(c.sample) for c in coefs])
        self._coef_velocity = as_tensor([float(c.velocity) for c in coefs])
        self._coef_noise = as_tensor([float(c.noise) for c in coefs])
        # Tweedie x̂₀ = p·x + q·u at each grid time (x itself at t = 0).
        self._x0_sample = as_tensor([float(c.x0_sample) for c in coefs] + [1.0])
        self._x0_velocity = as_tensor([float(c.x0_velocity) for c in coefs] + [0.0])

    def _index(self, k: int | torch.Tensor, rows: int) -> torch.Tensor:
        if isinstance(k, torch.Tensor):
            return k.to(self._device)
        return torch.full((rows,), int(k), dtype=torch.long, device=self._device)

    # Every helper below works on a global batch of rows; `layout` says which rows this process holds (all of them
    # in one process, where the helpers are the plain one-process operations). Per-row grid indices `k` and
    # `prompt_index` are always given for the whole batch; `x`, `u` hold this process's rows.
    def _layout(self, total: int) -> RowLayout:
        """Rows 0 … total − 1 of a new batch: all here, or even contiguous blocks over the ranks."""
        return RowLayout(total) if self._comm is None else self._comm.blocks(total)

    def _take(
        self, layout: RowLayout, rows: torch.Tensor | None, *tensors: torch.Tensor
    ) -> list[torch.Tensor]:
        """The global `rows` (`None`: all) of `tensors` (laid out by `layout`), held by every process."""
        if not layout.sharded:
            return list(tensors) if rows is None else [t[rows] for t in tensors]
        rows = torch.arange(layout.total) if rows is None else rows
        return self._comm.move(list(tensors), layout, rows, self._comm.everywhere(len(rows)))

    def _expand(self, x: torch.Tensor, times: int, layout: RowLayout) -> torch.Tensor:
        """Each row of `x` (held everywhere) repeated `times` times, as this process's rows of `layout`."""
        if not layout.sharded:
            return x.repeat_interleave(times, dim=0)
        return x.index_select(0, (layout.positions // times).to(x.device))

    def _noise(self, like: torch.Tensor, layout: RowLayout) -> torch.Tensor:
        """Standard normal noise for this process's rows, drawn for the whole batch (generators stay in step)."""
        if not layout.sharded:
            return draw_noise(like, self._generator)
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        full = torch.empty((layout.total, *like.shape[1:]), dtype=dtype, device=like.device)
        return layout.local(draw_noise(full, self._generator, out=full))

    def _evaluate(
        self,
        x: torch.Tensor,
        k: int | torch.Tensor,
        prompt_index: torch.Tensor,
        layout: RowLayout | None = None,
    ) -> torch.Tensor:
        """Velocities at grid index k (per row or shared): one NFE per row, charged before the call."""
        counts = torch.bincount(prompt_index.cpu(), minlength=len(self._prompts)).tolist()
        self._ledger.charge(counts)
        rows = len(prompt_index)  # the whole batch's NFE, on every process
        t = self._model_times[self._index(k, rows)]
        if layout is not None and layout.sharded:
            t, prompt_index = layout.local(t), layout.local(prompt_index)
        u = self.adapter.velocity(x, t, prompt_index)
        if self._bar is not None:
            self._bar.update(rows)
        return u

    def _step(
        self, x: torch.Tensor, u: torch.Tensor, k: int | torch.Tensor, layout: RowLayout | None = None
    ) -> torch.Tensor:
        """x at grid index k → a sample at k + 1 (SDE or ODE step in the sampler's frame, written in the model's);
        k per row or shared. The scheduler's step function, with one set of coefficients per row."""
        if layout is None or not layout.sharded:
            idx = self._index(k, x.shape[0])
            coefs = (self._coef_sample[idx], self._coef_velocity[idx], self._coef_noise[idx])
            return apply_step(x, u, *coefs, generator=self._generator)
        idx = self._index(k, layout.total)
        noise_coef = self._coef_noise[idx]
        noise = self._noise(x, layout) if bool((noise_coef != 0).any()) else None
        coefs = (
            layout.local(self._coef_sample[idx]),
            layout.local(self._coef_velocity[idx]),
            layout.local(noise_coef),
        )
        return apply_step(x, u, *coefs, noise=noise)

    def _tweedie(
        self, x: torch.Tensor, u: torch.Tensor | None, k: int | torch.Tensor, layout: RowLayout | None = None
    ) -> torch.Tensor:
        if u is None:
            return x
        idx = self._index(k, x.shape[0] if layout is None else layout.total)
        if layout is not None:
            idx = layout.local(idx)
        return apply_step(x, u, self._x0_sample[idx], self._x0_velocity[idx])

    def _score(
        self, x0: torch.Tensor, prompt_index: torch.Tensor, where: str, layout: RowLayout | None = None
    ) -> torch.Tensor:
        """Rewards `[rows]` (float64) of the whole batch, on every process."""
        if layout is not None and layout.sharded:
            return self._score_sharded(x0, prompt_index, where, layout)
        prompts = [self._prompts[i] for i in prompt_index.tolist()]
        inputs = x0 if self.reward_input == "latent" else self.adapter.decode_batched(x0)
        values = self.reward(inputs, prompts)
        return check_rewards(
            values,
            x0.shape[0],
            nonfinite=self.nonfinite_rewards,
            where=f"{self.method}, {where}",
            device=x0.device,
        )

    def _score_sharded(self, x0, prompt_index, where: str, layout: RowLayout) -> torch.Tensor:
        """Score this process's rows, all-gather. A failing reward fails every rank (none waits forever)."""
        local, error = None, None
        try:
            local = self._score(x0, layout.local(prompt_index), where)
        except Exception as err:  # re-raised below, after the other ranks have learnt of it
            error = err
        rewards, failed = self._comm.gather_values(
            local if local is not None else x0.new_zeros(0), layout, failed=error is not None
        )
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(
                f"{self.method}, {where}: the reward failed on rank(s) {failed} (see their errors)"
            )
        return rewards.to(x0.device)

    def _record(self, **fields) -> StepRecord:
        prompt = fields["prompt"]
        rewards = fields.get("rewards") or []
        finite = [r for r in rewards if math.isfinite(r)]
        if finite and fields.get("kind") != "final":
            self._best[prompt] = max(self._best[prompt], max(finite))
        step = fields["step"]
        record = StepRecord(
            time=float(self._times[step]) if 0 <= step < len(self._times) else 0.0,
            nfe=self._ledger.used[prompt],
            best_reward=self._best[prompt],
            **fields,
        )
        self._trace.records.append(record)
        if self._bar is not None and math.isfinite(max(self._best)):
            self._bar.set_postfix(best=f"{max(self._best):.4g}", refresh=False)
        if self.callback is not None:
            self.callback(self, record)
        return record

    def _finish(
        self, x: torch.Tensor, u: torch.Tensor, rewards: torch.Tensor, group: int, layout: RowLayout
    ) -> tuple:
        """Pick each prompt's best of `group` final candidates (rows grouped by prompt), in the final-step mode."""
        num_prompts = len(self._prompts)
        prompt_index = torch.arange(num_prompts, device=self._device).repeat_interleave(group)
        last = self.num_steps - 1
        if self.final_step == "integrate":
            x = self._step(x, u, last, layout)
            rewards = self._score(x, prompt_index, "final sample at t=0", layout)
            candidates = x
        else:
            candidates = self._tweedie(x, u, last, layout)
        by_prompt = rewards.view(num_prompts, group)
        choice = by_prompt.argmax(dim=1)
        rows = torch.arange(num_prompts, device=rewards.device) * group + choice
        for b in range(num_prompts):
            self._record(
                prompt=b,
                step=self.num_steps if self.final_step == "integrate" else last,
                kind="final",
                rewards=by_prompt[b].tolist(),
                selected=[int(choice[b])],
            )
        (chosen,) = self._take(layout, rows, candidates)
        return chosen, rewards[rows]

    def _pick(self, rewards: torch.Tensor, groups: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax within consecutive groups of `size` rows → (chosen row per group, its index within the group)."""
        choice = rewards.view(groups, size).argmax(dim=1)
        return torch.arange(groups, device=rewards.device) * size + choice, choice

    # -- methods ------------------------------------------------------------------------------------------------------
    def _search_bon(self):
        plan, num_prompts = self.plan, len(self._prompts)
        n = plan.num_particles
        prompt_index = torch.arange(num_prompts, device=self._device).repeat_interleave(n)
        layout = self._layout(num_prompts * n)
        x = layout.local(self.adapter.initial_noise(num_prompts * n, self._generator))
        u = None
        for k in range(self.num_steps):
            if k > 0:
                x = self._step(x, u, k - 1, layout)
            u = self._evaluate(x, k, prompt_index, layout)
        last = self.num_steps - 1
        rewards = None
        if self.final_step == "tweedie":
            rewards = self._score(self._tweedie(x, u, last, layout), prompt_index, f"step {last}", layout)
        return self._finish(x, u, rewards, n, layout)

    def _search_smc(self):
        plan, num_prompts = self.plan, len(self._prompts)
        n = plan.num_particles
        prompt_index = torch.arange(num_prompts, device=self._device).repeat_interleave(n)
        layout = self._layout(num_prompts * n)
        x = layout.local(self.adapter.initial_noise(num_prompts * n, self._generator))
        u = self._evaluate(x, 0, prompt_index, layout)
        rewards = self._score(self._tweedie(x, u, 0, layout), prompt_index, "step 0", layout)
        state = SMCState(plan.smc, plan.search_steps, rewards.view(num_prompts, n), where="smc")
        x, u, rewards, layout = self._smc_select(state, state.start(), x, u, rewards, "init", layout)
        for k in range(1, plan.search_steps + 1):
            x = self._step(x, u, k - 1, layout)
            u = self._evaluate(x, k, prompt_index, layout)
            rewards = self._score(self._tweedie(x, u, k, layout), prompt_index, f"step {k}", layout)
            decision = state.update(rewards.view(num_prompts, n), k)
            x, u, rewards, layout = self._smc_select(state, decision, x, u, rewards, "propose", layout)
        return self._finish(x, u, rewards, n, layout)

    def _smc_select(self, state: SMCState, decision, x, u, rewards, kind: str, layout: RowLayout):
        """Resample the prompts the SMC step marked (the last step never does: it selects by argmax) and record.
        Sharded: every process draws the same ancestors; only particles whose ancestor is held elsewhere move."""
        num_prompts = len(self._prompts)
        proposal_rewards = rewards.view(num_prompts, -1).tolist()
        ancestors = None
        if bool(decision.resample.any()):
            if not layout.sharded:
                (x, u, rewards), ancestors = state.resample(decision, [x, u, rewards], self._generator)
            else:
                (rewards,), ancestors = state.resample(decision, [rewards], self._generator)
                n = ancestors.shape[1]
                sources = (ancestors.cpu() + torch.arange(num_prompts)[:, None] * n).flatten()
                owners = balanced_owners(sources, layout.owners, self._comm.world_size)
                moved = RowLayout(layout.total, owners, self._comm.rank)
                x, u = self._comm.move([x, u], layout, sources, moved)
                layout = moved
        for b in range(num_prompts):
            resampled = bool(decision.resample[b])
            self._record(
                prompt=b,
                step=decision.step,
                kind="resample" if resampled else kind,
                rewards=proposal_rewards[b],
                ess=float(decision.ess[b]),
                resampled=resampled,
                ancestors=ancestors[b].tolist() if resampled else None,
            )
        return x, u, rewards, layout

    def _init_chains(self, chains: int, init: int):
        """Best of `init` initial noises per chain: (x, u, rewards) with one row per (prompt, chain), held by every
        process."""
        num_prompts = len(self._prompts)
        groups = num_prompts * chains
        prompt_index = torch.arange(num_prompts, device=self._device).repeat_interleave(chains * init)
        layout = self._layout(groups * init)
        x = layout.local(self.adapter.initial_noise(groups * init, self._generator))
        u = self._evaluate(x, 0, prompt_index, layout)
        rewards = self._score(self._tweedie(x, u, 0, layout), prompt_index, "initial noise", layout)
        rows, choice = self._pick(rewards, groups, init)
        for g in range(groups):
            self._record(
                prompt=g // chains,
                chain=g % chains,
                step=0,
                kind="init",
                rewards=rewards[g * init : (g + 1) * init].tolist(),
                selected=[int(choice[g])],
            )
        x, u = self._take(layout, rows, x, u)
        return x, u, rewards[rows]

    def _search_svdd(self):
        return self._search_code()

    def _search_code(self):
        plan, num_prompts = self.plan, len(self._prompts)
        chains, k_props = plan.num_chains, plan.num_proposals
        x, u, rewards = self._init_chains(chains, plan.init_particles)
        cand_prompt = torch.arange(num_prompts, device=self._device).repeat_interleave(chains * k_props)
        layout = self._layout(len(cand_prompt))
        k = 0
        while k < plan.search_steps:
            length = min(plan.block_size, plan.search_steps - k)
            cx = self._expand(x, k_props, layout)
            cu = self._expand(u, k_props, layout)
            for j in range(length):
                cx = self._step(cx, cu, k + j, layout)
                cu = self._evaluate(cx, k + j + 1, cand_prompt, layout)
            k += length
            x, u, rewards = self._keep_best(cx, cu, k, cand_prompt, chains, k_props, layout)
        return self._finish(x, u, rewards, chains, RowLayout(len(rewards)))

    def _keep_best(self, cx, cu, step: int, cand_prompt, chains: int, k_props: int, layout: RowLayout):
        """Score K candidates per chain at grid `step` (Tweedie), keep each chain's best, record the selection."""
        groups = layout.total // k_props
        scores = self._score(self._tweedie(cx, cu, step, layout), cand_prompt, f"step {step}", layout)
        rows, choice = self._pick(scores, groups, k_props)
        for g in range(groups):
            self._record(
                prompt=g // chains,
                chain=g % chains,
                step=step,
                kind="select",
                rewards=scores[g * k_props : (g + 1) * k_props].tolist(),
                selected=[int(choice[g])],
            )
        x, u = self._take(layout, rows, cx, cu)
        return x, u, scores[rows]

    def _search_sop(self):
        from ..interpolants import LinearInterpolant, renoise

        plan, num_prompts = self.plan, len(self._prompts)
        chains, k_props, forward = plan.num_chains, plan.num_proposals, plan.forward_steps
        groups = num_prompts * chains
        chain_prompt = torch.arange(num_prompts, device=self._device).repeat_interleave(chains)
        cand_prompt = chain_prompt.repeat_interleave(k_props)
        seeds = self._layout(groups)
        x = seeds.local(self.adapter.initial_noise(groups, self._generator))
        for k in range(plan.seed_steps):
            x = self._step(x, self._evaluate(x, k, chain_prompt, seeds), k, seeds)
        (x,) = self._take(seeds, None, x)
        for b in range(num_prompts):
            self._record(prompt=b, step=plan.seed_steps, kind="init", rewards=[])
        linear = LinearInterpolant()
        layout = self._layout(len(cand_prompt))
        level, u, rewards = plan.seed_steps, None, None
        while level < plan.search_steps:
            start = level - forward
            cx = self._expand(x, k_props, layout)
            noise = self._noise(cx, layout)
            cx = renoise(cx, float(self._times[level]), float(self._times[start]), linear, noise=noise)
            for k in range(start, level + 1):
                cx = self._step(cx, self._evaluate(cx, k, cand_prompt, layout), k, layout)
            level += 1
            cu = self._evaluate(cx, level, cand_prompt, layout)
            x, u, rewards = self._keep_best(cx, cu, level, cand_prompt, chains, k_props, layout)
        return self._finish(x, u, rewards, chains, RowLayout(len(rewards)))

    def _search_rbf(self):
        plan, num_prompts = self.plan, len(self._prompts)
        chains = plan.num_chains
        groups = num_prompts * chains
        x, u, rewards = self._init_chains(chains, plan.init_particles)
        machines = [
            RolloverBudgetForcing(
                plan.chain_budgets,
                plan.search_steps,
                rewards[b * chains : (b + 1) * chains].tolist(),
                plan.rollover,
            )
            for b in range(num_prompts)
        ]
        position = torch.zeros(
            groups, dtype=torch.long, device=self._device
        )  # grid index of each chain's particle
        best_x, best_u = x.clone(), u.clone()  # best proposal of the chain's current step
        best_r = torch.full((groups,), -math.inf, dtype=torch.float64, device=self._device)
        final_r = torch.full((groups,), -math.inf, dtype=torch.float64, device=self._device)
        while True:
            active = [b * chains + c for b, m in enumerate(machines) for c in m.active_chains()]
            if not active:
                break
            rows = torch.tensor(active, dtype=torch.long, device=self._device)
            layout = self._layout(len(active))  # one proposal per active chain, spread over the processes
            here = position[rows]
            mine = layout.local(rows)
            proposal = self._step(x[mine], u[mine], here, layout)
            prompt_index = rows // chains
            pu = self._evaluate(proposal, here + 1, prompt_index, layout)
            scores = self._score(
                self._tweedie(proposal, pu, here + 1, layout), prompt_index, "proposal", layout
            )
            # Decide first, copy after: the proposals kept (a chain's new best, an accepted step) are fetched once.
            new_best, new_x = {}, {}  # chain → proposal index; chain → proposal index or None (its best)
            for i, g in enumerate(active):
                b, c = divmod(g, chains)
                reward = float(scores[i])
                if reward > float(best_r[g]) or machines[b].used[c] == 0:
                    best_r[g] = scores[i]
                    new_best[g] = i
                decision = machines[b].observe(c, reward)
                if decision.action == "accept":
                    new_x[g] = i
                elif decision.action == "exhausted":
                    new_x[g] = None
                if decision.action in ("accept", "exhausted"):
                    position[g] += 1
                    best_r[g] = -math.inf
                elif decision.action == "done":
                    new_x[g], final_r[g] = None, best_r[g]
                    position[g] += 1
                self._record(
                    prompt=b,
                    chain=c,
                    step=decision.step,
                    kind="propose",
                    rewards=[reward],
                    selected=[decision.chosen] if decision.chosen is not None else None,
                    quota=decision.quota,
                    used=decision.used,
                    rollover=decision.rollover,
                    action=decision.action,
                )
            kept = sorted(set(new_best.values()) | {i for i in new_x.values() if i is not None})
            slot = {i: j for j, i in enumerate(kept)}
            kept_x, kept_u = self._take(
                layout, torch.tensor(kept, dtype=torch.long, device=self._device), proposal, pu
            )
            for g, i in new_best.items():
                best_x[g], best_u[g] = kept_x[slot[i]], kept_u[slot[i]]
            for g, i in new_x.items():
                x[g], u[g] = (best_x[g], best_u[g]) if i is None else (kept_x[slot[i]], kept_u[slot[i]])
        return self._finish(x, u, final_r, chains, RowLayout(groups))


__all__ = ["METHODS", "InferenceScaler", "SearchResult"]
