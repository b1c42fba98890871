"""Benchmark: Triton resampling vs torch's multinomial + gather, and a fused SDE step vs its torch expression.

On a GPU (the real run, ~1 minute on an H200):

    python benchmarks/resample_gpu.py --out-dir "$OUT"

Sections (each printed as a table and written to <out-dir>/resample_gpu.json and one CSV per section):
  1. resample: B in {1, 8}, N in {4, 16, 64, 256}, 262,144 bf16 values per particle (a FLUX latent at 1024^2),
     and B in {1, 8}, N in {4, 64, 256} of 4,096 values (all launch-bound), systematic, log weights ~ N(0, 1).
     Providers: torch softmax + multinomial + index gather (the baseline), ours out of place, ours in place with
     preallocated buffers (what a sampler loop runs), ours with input validation (one host sync), each launch
     path forced (the one-launch fused kernel, the ancestor kernel + gather), and a device-to-device copy of the
     same bytes. Effective bandwidth counts the bytes actually read and written (in place: only the particles
     that move, averaged over 32 draws). Targets: >= 4x the baseline; >= 80 % of copy bandwidth at the large
     sizes (>= 64 MiB of particles); and the speed check: never slower than the baseline (out of place and in
     place) at any size, printed as a table and a PASS/FAIL line; the exit status is 3 when it fails.
  2. ancestors: the ancestor kernel alone per scheme vs softmax + torch.multinomial.
  3. gather_configs: gather launch configurations at the largest size (to tune the defaults).
  4. affine_step: the fused sampler step (kernels/affine_step_triton.py) on the linear-interpolant SDE step vs the
     unfused torch expression and vs `affine_step_reference` (the CPU path), with noise drawn by torch or in the
     kernel, for 1, 64 and 512 particles of 262,144 bf16 values. Prints whether fusing pays.
  5. graphs: sizes <= 16 MiB replayed from a CUDA graph (GPU time without Python launch overhead), last.

Timing: triton.testing.do_bench (CUDA events, L2 flushed between reps) quantiles p50/p20/p80 in ms.
`--dry-run` runs every section on tiny CPU sizes (kernels under the Triton interpreter, perf_counter timing)
to check this script's logic without a GPU; its numbers mean nothing.

Works from a checkout without installing the project: `ttsplugin_kernels` is imported from ../kernels.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLUX_STEP_MS = 170.0  # one FLUX-12B transformer step at 1024^2 per image on an H200 (DESIGN.md anchor)
SPEEDUP_TARGET = 4.0
BANDWIDTH_TARGET = 0.80
LARGE_BYTES = 64 * 2**20
SPEED_CHECK_FAILED = 3  # exit status when the kernels were right but slower than torch somewhere


def import_kernels():
    """`ttsplugin_kernels`, installed or straight from this checkout's kernels/ folder."""
    try:
        import ttsplugin_kernels

        return ttsplugin_kernels
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "ttsplugin_kernels",
            ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["ttsplugin_kernels"] = module
        spec.loader.exec_module(module)
        return module


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        default=os.environ.get("OUT") or str(ROOT / "build" / "bench"),
        help="where to write resample_gpu.json and the CSVs (default: $OUT, else build/bench)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny sizes on the CPU (Triton interpreter), to check the script without a GPU",
    )
    parser.add_argument("--rep-ms", type=float, default=100.0, help="do_bench measuring time per case (ms)")
    return parser.parse_args(argv)


class Bench:
    """Times a callable: do_bench quantiles on CUDA, perf_counter medians on the CPU (dry run)."""

    def __init__(self, device: str, rep_ms: float):
        self.device = device
        self.rep_ms = rep_ms

    def __call__(self, fn) -> tuple[float, float, float]:
        if self.device == "cuda":
            from triton.testing import do_bench

            p50, p20, p80 = do_bench(fn, warmup=25, rep=self.rep_ms, quantiles=[0.5, 0.2, 0.8])
            return float(p50), float(p20), float(p80)
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times), min(times), max(times)

    def graph(self, fn) -> float | None:
        """p50 ms of `fn` replayed from a CUDA graph (no Python launch overhead); None where capture fails."""
        if self.device != "cuda":
            return None
        from triton.testing import do_bench_cudagraph

        try:
            return float(do_bench_cudagraph(fn, rep=20, quantiles=[0.5, 0.2, 0.8])[0])
        except Exception as error:  # e.g. an op that cannot be captured: report, don't fail the run
            print(f"  (CUDA graph timing unavailable: {type(error).__name__}: {error})")
            return None


def gbps(num_bytes: float, ms: float) -> float:
    return num_bytes / (ms * 1e-3) / 1e9


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n## {title}")
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).rjust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def bench_resample(tk, torch, bench: Bench, sizes, device: str) -> list[dict]:
    return [resample_case(tk, torch, bench, b, n, d, device) for b, n, d in sizes]


def resample_case(tk, torch, bench: Bench, batch_size: int, num_particles: int, features: int, device: str):
    dtype = torch.bfloat16
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch_size, num_particles, features, device=device, generator=g).to(dtype)
    lw = torch.randn(batch_size, num_particles, device=device, generator=g)
    batch_index = torch.arange(batch_size, device=device)[:, None]
    particle_bytes = x.numel() * x.element_size()

    # Correctness first: a wrong kernel must fail the run, not produce a fast number (both launch paths).
    from ttsplugin_kernels.resample import FUSED_MAX_PARTICLES, _resample

    u = tk.draw_uniforms(batch_size, num_particles, "systematic", g)
    expected, expected_ancestors = tk.resample(x, lw, uniforms=u, backend="torch")
    paths = ["auto", "two_pass"] + (["fused"] if num_particles <= FUSED_MAX_PARTICLES else [])
    for path in paths:
        got, ancestors = _resample(x, lw, u, "systematic", None, None, None, False, "triton", path)
        work = x.clone()
        _resample(work, lw, u, "systematic", None, work, None, True, "triton", path)
        if not (torch.equal(ancestors, expected_ancestors) and torch.equal(got, expected)):
            raise AssertionError(
                f"Triton resample ({path}) differs from the reference at B={batch_size}, N={num_particles}"
            )
        if not torch.equal(work, expected):
            raise AssertionError(
                f"in-place resample ({path}) differs from the reference at B={batch_size}, N={num_particles}"
            )

    slots = torch.arange(num_particles, device=device)
    draws = 32 if device == "cuda" else 2
    moved = statistics.mean(
        float((tk.resample_ancestors(lw, "systematic", g) != slots).sum()) for _ in range(draws)
    )

    def torch_baseline():
        weights = torch.softmax(lw, dim=-1)
        return x[batch_index, torch.multinomial(weights, num_particles, replacement=True)]

    out_buffer = torch.empty_like(x)
    work = x.clone()
    u_buffer = torch.empty(batch_size, 1, dtype=torch.float64, device=device)
    a_buffer = torch.empty(batch_size, num_particles, dtype=torch.int64, device=device)

    def ours():
        return tk.resample(x, lw, "systematic", g, backend="triton", validate=False)

    def ours_in_place():
        uniforms = tk.draw_uniforms(batch_size, num_particles, "systematic", g, out=u_buffer)
        return tk.resample(
            work,
            lw,
            uniforms=uniforms,
            out=work,
            ancestors_out=a_buffer,
            backend="triton",
            validate=False,
        )

    def ours_checked():
        return tk.resample(x, lw, "systematic", g, out=out_buffer, backend="triton", validate=True)

    def forced(path):  # one launch path, as `resample(validate=False)` runs it (uniforms drawn per call)
        def run():
            uniforms = tk.draw_uniforms(batch_size, num_particles, "systematic", g)
            return _resample(x, lw, uniforms, "systematic", None, None, None, False, "triton", path)

        return run

    def copy():
        return out_buffer.copy_(x)

    cases = [
        ("torch", torch_baseline), ("ours", ours), ("ours_in_place", ours_in_place),
        ("ours_checked", ours_checked), ("copy", copy), ("two_pass", forced("two_pass")),
    ] + ([("fused", forced("fused"))] if "fused" in paths else [])  # fmt: skip
    times = {name: bench(fn) for name, fn in cases}
    from ttsplugin_kernels.resample import FUSED_MAX_BYTES

    fused_auto = num_particles <= FUSED_MAX_PARTICLES and particle_bytes <= FUSED_MAX_BYTES
    copy_bw = gbps(2 * particle_bytes, times["copy"][0])
    bw = gbps(2 * particle_bytes, times["ours"][0])
    bw_in_place = gbps(2 * particle_bytes * moved / (batch_size * num_particles), times["ours_in_place"][0])
    large = particle_bytes >= LARGE_BYTES
    best_speedup = times["torch"][0] / min(times["ours"][0], times["ours_in_place"][0])
    speedup = times["torch"][0] / times["ours"][0]
    speedup_in_place = times["torch"][0] / times["ours_in_place"][0]
    row = {
        "B": batch_size,
        "N": num_particles,
        "D": features,
        "MiB": particle_bytes / 2**20,
        "path": "fused" if fused_auto else "two_pass",
        "torch_ms": times["torch"][0],
        "ours_ms": times["ours"][0],
        "in_place_ms": times["ours_in_place"][0],
        "checked_ms": times["ours_checked"][0],
        "copy_ms": times["copy"][0],
        "fused_ms": times["fused"][0] if "fused" in times else None,
        "two_pass_ms": times["two_pass"][0],
        "speedup": speedup,
        "speedup_in_place": speedup_in_place,
        "never_slower": "PASS" if min(speedup, speedup_in_place) >= 1.0 else "FAIL",
        "moved_frac": moved / (batch_size * num_particles),
        "GBps": bw,
        "GBps_in_place": bw_in_place,
        "copy_GBps": copy_bw,
        "pct_copy": bw / copy_bw,
        "pct_copy_in_place": bw_in_place / copy_bw,
        "target_speedup": "met" if best_speedup >= SPEEDUP_TARGET else "missed",
        "target_bandwidth": ("met" if bw / copy_bw >= BANDWIDTH_TARGET else "missed") if large else "n/a",
        "quantiles_ms": {name: list(t) for name, t in times.items()},
    }  # fmt: skip
    return row


def bench_ancestors(tk, torch, bench: Bench, sizes, device: str) -> list[dict]:
    rows = []
    for batch_size, num_particles in sizes:
        g = torch.Generator(device).manual_seed(1)
        lw = torch.randn(batch_size, num_particles, device=device, generator=g)
        a_buffer = torch.empty(batch_size, num_particles, dtype=torch.int64, device=device)
        baseline = bench(
            lambda lw=lw, n=num_particles: torch.multinomial(torch.softmax(lw, -1), n, replacement=True)
        )[0]
        row = {"B": batch_size, "N": num_particles, "torch_multinomial_ms": baseline}
        for scheme in tk.SCHEMES:
            row[f"{scheme}_ms"] = bench(
                lambda lw=lw, s=scheme, g=g, out=a_buffer: tk.resample_ancestors(
                    lw, s, g, out=out, backend="triton", validate=False
                )
            )[0]
        rows.append(row)
    return rows


def bench_gather_configs(tk, torch, bench: Bench, batch_size: int, num_particles: int, features: int, device):
    from ttsplugin_kernels.resample_triton import gather_launch_config, gather_particles_triton

    g = torch.Generator(device).manual_seed(2)
    x = torch.randn(batch_size, num_particles, features, device=device, generator=g).to(torch.bfloat16)
    out = torch.empty_like(x)
    ancestors = tk.resample_ancestors(torch.randn(batch_size, num_particles, device=device, generator=g))
    expected = x[torch.arange(batch_size, device=device)[:, None], ancestors]
    default = gather_launch_config(features)
    configs = [default] + [
        (rows, block_d, warps)
        for rows, block_d, warps in [(1, 1024, 4), (1, 2048, 4), (1, 8192, 8), (2, 2048, 4), (1, 4096, 8)]
        if block_d <= max(16, features) and (rows, block_d, warps) != default
    ]
    rows = []
    copy_ms = bench(lambda: out.copy_(x))[0]
    for config in configs:
        out.zero_()
        gather_particles_triton(x, ancestors, out, config=config)
        if not torch.equal(out, expected):
            raise AssertionError(f"gather config {config} is wrong")
        ms = bench(lambda config=config: gather_particles_triton(x, ancestors, out, config=config))[0]
        rows.append(
            {
                "ROWS": config[0],
                "BLOCK_D": config[1],
                "num_warps": config[2],
                "default": config == default,
                "ms": ms,
                "pct_copy": copy_ms / ms,
            }
        )
    return rows


def bench_affine_step(torch, bench: Bench, particle_counts, features: int, device: str) -> list[dict]:
    return [affine_step_case(torch, bench, particles, features, device) for particles in particle_counts]


def _linear_sde_coefficients(t: float, dt: float, g: float) -> tuple[float, float, float]:
    half_g2_over_t = 0.5 * g * g / t
    return 1.0 - dt * half_g2_over_t, -dt * (1.0 + half_g2_over_t * (1.0 - t)), g * math.sqrt(dt)


def affine_step_case(torch, bench: Bench, particles: int, features: int, device: str) -> dict:
    """The linear-interpolant reverse-SDE step as the fused kernel vs two torch baselines: the unfused expression a
    scheduler would write (score, drift, Euler–Maruyama: ~8 passes) and `affine_step_reference` (3 passes, what
    the CPU path runs)."""
    from ttsplugin_kernels.affine_step import affine_step_reference
    from ttsplugin_kernels.affine_step_triton import affine_step_triton

    t, dt = 0.5, 0.1
    diffusion = 3 * t**2
    a, b, c = _linear_sde_coefficients(t, dt, diffusion)
    g = torch.Generator(device).manual_seed(3)
    x = torch.randn(particles, features, device=device, generator=g).to(torch.bfloat16)
    u = torch.randn(particles, features, device=device, generator=g).to(torch.bfloat16)
    noise = torch.randn(particles, features, device=device, generator=g).to(torch.bfloat16)

    def unfused(eps):
        x32, u32 = x.float(), u.float()
        drift = u32 - 0.5 * diffusion**2 * (-(x32 + (1.0 - t) * u32) / t)
        return (x32 - drift * dt + diffusion * math.sqrt(dt) * eps.float()).to(x.dtype)

    expected = unfused(noise)
    got = affine_step_triton(x, u, a, b, c, noise=noise)
    if not torch.allclose(got.float(), expected.float(), atol=0.05, rtol=0.02):
        raise AssertionError(f"fused affine step differs from the torch expression at {particles} particles")

    times = {
        "torch_ms": bench(lambda: unfused(torch.randn(x.shape, device=device, dtype=x.dtype)))[0],
        "reference_ms": bench(
            lambda: affine_step_reference(x, u, a, b, c, torch.randn(x.shape, device=device, dtype=x.dtype))
        )[0],
        "torch_noise_given_ms": bench(lambda: unfused(noise))[0],
        "fused_noise_given_ms": bench(lambda: affine_step_triton(x, u, a, b, c, noise=noise))[0],
        "fused_philox_ms": bench(lambda: affine_step_triton(x, u, a, b, c, seed=7))[0],
    }
    saved_us = (times["torch_ms"] - times["fused_philox_ms"]) * 1e3 / particles
    return {
        "particles": particles,
        **times,
        "speedup_philox": times["torch_ms"] / times["fused_philox_ms"],
        "speedup_vs_reference": times["reference_ms"] / times["fused_philox_ms"],
        "speedup_noise_given": times["torch_noise_given_ms"] / times["fused_noise_given_ms"],
        "saved_us_per_particle": saved_us,
        "saved_pct_of_flux_step": saved_us / (FLUX_STEP_MS * 1e3) * 100,
    }


def bench_graphs(tk, torch, bench: Bench, sizes, features: int, device: str) -> list[dict]:
    """Small sizes replayed from a CUDA graph: GPU time without Python launch overhead. Runs last, as a
    failed capture can leave the CUDA context unusable; the baseline allocates its output per call."""
    rows = []
    for batch_size, num_particles in sizes:
        if batch_size * num_particles * features * 2 > 16 * 2**20:
            continue
        g = torch.Generator(device).manual_seed(4)
        x = torch.randn(batch_size, num_particles, features, device=device, generator=g).to(torch.bfloat16)
        lw = torch.randn(batch_size, num_particles, device=device, generator=g)
        u = tk.draw_uniforms(batch_size, num_particles, "systematic", g)
        a_buffer = torch.empty(batch_size, num_particles, dtype=torch.int64, device=device)
        batch_index = torch.arange(batch_size, device=device)[:, None]

        def baseline(x=x, lw=lw, n=num_particles, batch_index=batch_index):
            return x[batch_index, torch.multinomial(torch.softmax(lw, -1), n, replacement=True)]

        def ours_in_place(x=x, lw=lw, u=u, a_buffer=a_buffer):
            return tk.resample(
                x, lw, uniforms=u, out=x, ancestors_out=a_buffer, backend="triton", validate=False
            )

        torch_ms, ours_ms = bench.graph(baseline), bench.graph(ours_in_place)
        rows.append(
            {
                "B": batch_size,
                "N": num_particles,
                "graph_torch_ms": torch_ms,
                "graph_in_place_ms": ours_ms,
                "graph_speedup": torch_ms / ours_ms if torch_ms and ours_ms else None,
            }
        )
    return rows


def save(results: dict, out_dir: Path) -> None:
    """Write what is measured so far: resample_gpu.json and one CSV per section."""
    env = results["environment"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "resample_gpu.json").write_text(json.dumps(results, indent=2))
    for section, rows in results.items():
        if not isinstance(rows, list) or not rows:
            continue
        fields = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
        with open(out_dir / f"resample_gpu_{section}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["device", "timestamp", *fields], extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({"device": env["device"], "timestamp": env["timestamp"], **row})


def environment(torch, device: str) -> dict:
    import triton

    info = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    tk = import_kernels()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --dry-run to check the script on the CPU")
    if args.dry_run:
        features, big, particles = 64, (2, 16), [1, 4]
        sizes = [(1, 4, 64), (2, 16, 64), (2, 80, 3)]  # the last one takes the two-kernel path
    else:
        features, big, particles = 262_144, (8, 256), [1, 64, 512]
        # FLUX latents at 1024^2 (the table of BENCHMARKS.md), then small 64x64x1 particles (all launch-bound).
        sizes = [(b, n, features) for b in (1, 8) for n in (4, 16, 64, 256)]
        sizes += [(b, n, 4096) for b in (1, 8) for n in (4, 64, 256)]
    bench = Bench(device, args.rep_ms)
    env = environment(torch, device)
    print(
        f"# resample_gpu on {env['device']}: torch {env['torch']}, triton {env['triton']}, dry run: {args.dry_run}"
    )

    results = {"environment": env, "dry_run": args.dry_run}
    results["resample"] = bench_resample(tk, torch, bench, sizes, device)
    print_table(
        "resample (systematic, bf16, D values per particle): time p50 ms, speedup vs torch, bandwidth",
        results["resample"],
        ["B", "N", "D", "MiB", "path", "torch_ms", "ours_ms", "in_place_ms", "checked_ms", "fused_ms",
         "two_pass_ms", "copy_ms", "speedup", "speedup_in_place", "moved_frac", "pct_copy", "pct_copy_in_place",
         "target_speedup", "target_bandwidth"],
    )  # fmt: skip
    out_dir = Path(args.out_dir)
    results["speed_check"] = speed_check(results["resample"], args.dry_run)
    save(results, out_dir)
    results["ancestors"] = bench_ancestors(tk, torch, bench, [sizes[0][:2], big], device)
    print_table(
        "ancestors alone: p50 ms per scheme vs softmax + torch.multinomial",
        results["ancestors"],
        ["B", "N", "torch_multinomial_ms", *(f"{s}_ms" for s in tk.SCHEMES)],
    )
    save(results, out_dir)
    results["gather_configs"] = bench_gather_configs(tk, torch, bench, *big, features, device)
    print_table(
        f"gather launch configs at B={big[0]}, N={big[1]}",
        results["gather_configs"],
        ["ROWS", "BLOCK_D", "num_warps", "default", "ms", "pct_copy"],
    )
    save(results, out_dir)
    results["affine_step"] = bench_affine_step(torch, bench, particles, features, device)
    print_table(
        "fused affine (SDE) step vs torch: p50 ms",
        results["affine_step"],
        ["particles", "torch_ms", "reference_ms", "fused_philox_ms", "speedup_philox", "speedup_vs_reference",
         "torch_noise_given_ms", "fused_noise_given_ms", "speedup_noise_given", "saved_us_per_particle",
         "saved_pct_of_flux_step"],
    )  # fmt: skip
    top = results["affine_step"][-1]
    verdict = "PAYS" if top["speedup_philox"] >= 2.0 else "DOES NOT PAY"
    print(
        f"\nfused affine step at {top['particles']} particles: {top['speedup_philox']:.2f}x the torch expression "
        f"({verdict} against it, rule: >= 2x); it saves {top['saved_us_per_particle']:.2f} us per particle-step, "
        f"{top['saved_pct_of_flux_step']:.4f} % of a {FLUX_STEP_MS:.0f} ms FLUX step"
    )
    results["affine_verdict"] = verdict
    save(results, out_dir)
    results["graphs"] = bench_graphs(
        tk, torch, bench, [(b, n) for b, n, d in sizes if d == features], features, device
    )
    print_table(
        "small sizes replayed from a CUDA graph (no launch overhead): p50 ms",
        results["graphs"],
        ["B", "N", "graph_torch_ms", "graph_in_place_ms", "graph_speedup"],
    )
    save(results, out_dir)
    print(f"\nwrote {out_dir / 'resample_gpu.json'} and resample_gpu_<section>.csv")
    if any(not math.isfinite(r["ours_ms"]) for r in results["resample"]):
        raise SystemExit("non-finite timing")
    print(results["speed_check"]["line"])
    return SPEED_CHECK_FAILED if results["speed_check"]["verdict"] == "FAIL" else 0


def speed_check(rows: list[dict], dry_run: bool) -> dict:
    """Issue 13's rule: `resample` (out of place and in place, validate=False) is never slower than torch's
    softmax + multinomial + gather, at any measured size. Printed as a table and one PASS/FAIL line."""
    print_table(
        "never slower than torch: speedup = torch p50 / ours p50 (>= 1 at every size)",
        rows,
        ["B", "N", "D", "MiB", "path", "speedup", "speedup_in_place", "never_slower"],
    )
    failed = [f"B={r['B']} N={r['N']} D={r['D']}" for r in rows if r["never_slower"] == "FAIL"]
    worst = min(min(r["speedup"], r["speedup_in_place"]) for r in rows)
    if dry_run:
        verdict, line = "n/a", "speed check: n/a (dry run: CPU timings under the interpreter mean nothing)"
    elif failed:
        verdict, line = (
            "FAIL",
            f"speed check: FAIL (slower than torch at {', '.join(failed)}; worst {worst:.2f}x)",
        )
    else:
        verdict, line = "PASS", f"speed check: PASS (>= torch at all {len(rows)} sizes; worst {worst:.2f}x)"
    return {"verdict": verdict, "line": line, "failed": failed, "worst_speedup": worst}


if __name__ == "__main__":
    sys.exit(main())
