"""Cost of one FlowSDEScheduler.step() vs FlowMatchEulerDiscreteScheduler.step() on FLUX-sized latents.

Default shape: packed FLUX latents of 8 images at 1024² — 16 latent channels × 128 × 128, packed 2×2 into
[8, 4096, 64]. Every variant steps the same tensors; timings are interleaved round-robin (so machine load hits all
variants alike) and reported as medians and as ratios to FlowMatchEuler measured in the same run. The peak bytes
allocated per step come from torch.profiler's memory events.

    python benchmarks/flow_sde_step.py                      # float32, torch's default thread count
    python benchmarks/flow_sde_step.py --dtype bfloat16 --repeats 30
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_ttsplugin import FlowSDEScheduler

VARIANTS = {
    "FlowMatchEuler (baseline)": None,
    "FlowSDE ode/linear (Euler-exact)": {"sampler": "ode", "interpolant": "linear"},
    "FlowSDE ode/vp": {"sampler": "ode", "interpolant": "vp"},
    "FlowSDE sde/linear": {"sampler": "sde", "interpolant": "linear"},
    "FlowSDE sde/vp (default)": {"sampler": "sde", "interpolant": "vp"},
    "FlowSDE sde/vp, noise passed in": {"sampler": "sde", "interpolant": "vp", "_noise": True},
}


class _Stepper:
    """Steps one scheduler on fixed tensors, restarting its grid when it runs out."""

    def __init__(self, config, sample, model_output, grid_steps):
        config = dict(config) if config is not None else None
        self.pass_noise = bool(config and config.pop("_noise", False))
        if config is None:
            self.scheduler = FlowMatchEulerDiscreteScheduler()
        else:
            self.scheduler = FlowSDEScheduler(**config)
            self.scheduler.set_generator(torch.Generator().manual_seed(0))
        self.sample, self.model_output, self.grid_steps = sample, model_output, grid_steps
        self.noise = torch.randn(sample.shape, dtype=torch.float32) if self.pass_noise else None
        self._restart()

    def _restart(self):
        self.scheduler.set_timesteps(self.grid_steps)
        self.scheduler.set_begin_index(0)
        self.index = 0

    def __call__(self):
        if self.index == self.grid_steps:
            self._restart()
        t = self.scheduler.timesteps[self.index]
        kwargs = {"noise": self.noise} if self.pass_noise else {}
        out = self.scheduler.step(self.model_output, t, self.sample, return_dict=False, **kwargs)[0]
        self.index += 1
        return out


def _peak_bytes(stepper) -> int:
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        stepper()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument(
        "--tokens", type=int, default=4096, help="packed latent tokens, (H/16)·(W/16) (default: 4096)"
    )
    parser.add_argument(
        "--channels", type=int, default=64, help="packed channels, 16 latent channels × 4 (default: 64)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="latent dtype")
    parser.add_argument("--repeats", type=int, default=40, help="timed steps per variant (default: 40)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.tokens, args.channels)
    sample = torch.randn(shape, generator=gen).to(dtype)
    model_output = torch.randn(shape, generator=gen).to(dtype)
    steppers = {name: _Stepper(cfg, sample, model_output, grid_steps=50) for name, cfg in VARIANTS.items()}

    for stepper in steppers.values():  # warm up
        for _ in range(3):
            stepper()
    times = {name: [] for name in steppers}
    for _ in range(args.repeats):
        for name, stepper in steppers.items():
            start = time.perf_counter()
            stepper()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["FlowMatchEuler (baseline)"])
    mib = sample.numel() * sample.element_size() / 2**20
    print(
        f"step() on latents {list(shape)} {args.dtype} ({mib:.0f} MiB), {args.repeats} interleaved repeats, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print("| variant | median ms | p20–p80 ms | × FlowMatchEuler | peak alloc / step (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        q = statistics.quantiles(values, n=5)
        peak = _peak_bytes(steppers[name]) / 2**20
        median = statistics.median(values)
        print(
            f"| {name} | {median * 1e3:.2f} | {q[0] * 1e3:.2f}–{q[3] * 1e3:.2f} | {median / base:.2f} | {peak:.0f} |"
        )


if __name__ == "__main__":
    main()
