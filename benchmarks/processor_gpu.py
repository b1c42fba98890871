"""Per-step cost of TTSLogitsProcessor's slot components on a GPU, and a check that a step never synchronises.

On a GPU (part of `bash benchmarks/gpu_check.sh`, well under a minute):

    python benchmarks/processor_gpu.py --out-dir "$OUT"

For B in {64, 256} rows over a 151,936-token vocabulary (Qwen's), float32 logits as vLLM hands them to logits
processors. Every row is a controlled request, the mix a busy server would see: min/max budgets with a three-token
wait text and an answer prefix, TS, greedy and sampled rows (half with top-p 0.95), EOS as an end attempt, a
multi-token end delimiter on a quarter of the rows, and First Finish races of 8 on half the rows. The logits push
the end token and EOS up so that waits, forced ends and decisions happen every few steps. One *step* is what the
adapters call: `observe` (the previous token of every row), `inspect` (DeepConf's token confidence on every row,
window 2048, top-20) then `apply` (edit the logits), for ThinkingComponent, FirstFinishComponent and
ConfidenceComponent. Between steps a token is sampled from the edited logits (not timed), so the state
machine runs through all its phases.

Reported per B: median and p20/p80 of a step in microseconds (CUDA events, 200 steps after 20 warm-up steps),
next to two references on the same logits: one softmax (the least any sampler does per step), and a sampling step
with top-p (softmax + sort + cumulative sum + multinomial). Then 50 steps under
`torch.cuda.set_sync_debug_mode("error")`, with admissions and releases: any synchronising operation raises, and
the script reports it (and exits non-zero). (Pinned-memory copies are not syncs; a copy from pageable memory with
`non_blocking=True` is one that this mode does not flag, so the components never make one: `arrays.to_device`.) `--dry-run` runs everything on tiny CPU sizes to check the script's
logic; its numbers mean nothing and the sync check runs its sequence unchecked (the check needs CUDA).

Works from a checkout without installing the project (vLLM is not needed: the components are framework-free).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vllm_ttsplugin.components import (  # noqa: E402
    ConfidenceComponent,
    ConfidenceMember,
    FirstFinishComponent,
    SlotEnv,
    ThinkingComponent,
)
from vllm_ttsplugin.confidence import ConfidenceRequest  # noqa: E402
from vllm_ttsplugin.ffs import RACE_ID_KEY, RACE_SIZE_KEY, FirstFinishMember  # noqa: E402
from vllm_ttsplugin.vocab import SamplingView, ThinkingSpec  # noqa: E402

EOS, START, END, WAIT0, SPECIAL = 2, 10, 11, 12, 13  # token ids of the synthetic vocabulary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        default=os.environ.get("OUT") or str(ROOT / "build" / "bench"),
        help="where to write processor_gpu.json (default: $OUT, else build/bench)",
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU sizes, to check the script")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per batch size")
    return parser.parse_args(argv)


def _spec(i: int) -> ThinkingSpec:
    sampled = i % 2 == 1
    sampling = SamplingView(
        temperature=0.7 if sampled else 0.0,
        top_p=0.95 if i % 4 == 1 else 1.0,
        seed=1000 + i if sampled else None,
    )
    return ThinkingSpec(
        min_think=16 + i % 16,
        max_think=48 + i % 32,
        max_waits=None if i % 3 else 4,
        wait_ids=(WAIT0, 20, 21),
        answer_prefix_ids=(30, 31, 32, 33),
        end_ids=(SPECIAL, 40, 41) if i % 4 == 3 else (END,),
        start_ids=(START,),
        end_temperature=None,
        end_bias=1.0 if i % 5 == 0 else None,
        sampling=sampling,
        end_is_attempt=True,
        stop_ids=(EOS,),
    )


def _member(i: int) -> FirstFinishMember:
    params = SimpleNamespace(
        extra_args={"tts_first_finish": 1, RACE_ID_KEY: f"race{i // 8}", RACE_SIZE_KEY: 8},
        eos_token_id=EOS,
        stop_token_ids=[],
        stop=None,
        max_tokens=4096,
        skip_special_tokens=True,
    )
    return FirstFinishMember.from_params(params, None)


def _confident(i: int) -> ConfidenceMember:
    """DeepConf's tracking with its defaults (window 2048, top-20), a threshold no window falls below."""
    return ConfidenceMember(ConfidenceRequest(-1e9), inv_temperature=1.0 / 0.7, stop_token=EOS, marked=False)


def build(batch: int, device: torch.device, prompts=None):
    """The three components with `batch` admitted requests (prompts open in thinking), as the adapters admit
    them: every row under thinking control and confidence tracking, half of them in First Finish races."""
    env = SlotEnv(num_slots=batch, device=device, vocab=None, seed=0, pin_memory=device.type == "cuda")
    thinking, ffs, confidence = ThinkingComponent(env), FirstFinishComponent(env), ConfidenceComponent(env)
    if prompts is None:
        prompts = make_prompts(batch, device)
    slots = list(range(batch))
    thinking.admit(slots, [_spec(i) for i in slots], prompts)
    racing = slots[: batch // 2]
    ffs.admit(racing, [_member(i) for i in racing], [None] * len(racing))
    confidence.admit(slots, [_confident(i) for i in slots], [None] * batch)
    return [thinking, ffs, confidence]


def make_prompts(batch: int, device: torch.device) -> list[torch.Tensor]:
    """Prompts as the V2 runner hands them over: token tensors on the device, ending in an open think block."""
    return list(torch.tensor([5, 6, START], device=device).expand(batch, 3).unbind(0))


def run_steps(components, batch, vocab, steps, device, generator, timer=None):
    """`steps` decode steps: logits -> observe + apply (timed) -> sample. Returns per-step seconds."""
    slots = torch.arange(batch, device=device)
    slots_np = np.arange(batch)
    tokens = torch.full((batch,), START, dtype=torch.long, device=device)
    valid = torch.zeros(batch, dtype=torch.bool, device=device)
    times = []
    for step in range(steps):
        logits = torch.randn(batch, vocab, device=device, generator=generator)
        logits[:, END] += 3.0
        logits[:, EOS] += 2.0
        out_len = torch.full((batch,), step, dtype=torch.long, device=device)
        start = timer() if timer else None
        for comp in components:
            comp.observe(slots, tokens, out_len - 1, valid)
        for comp in components:
            comp.inspect(logits, slots, slots_np, out_len, None)
        for comp in components:
            logits = comp.apply(logits, slots, slots_np, out_len, None)
        if timer:
            times.append(timer(start))
        probs = logits.softmax(-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        valid = torch.ones(batch, dtype=torch.bool, device=device)
    return times


def cuda_timer():
    pending = []

    def timer(start=None):
        if start is None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        pending.append((start, end))
        return 0.0

    return timer, pending


def reference_costs(batch, vocab, device, generator, steps):
    """Median seconds of one softmax and of a top-p sampling step on [batch, vocab] float32 logits."""
    logits = torch.randn(batch, vocab, device=device, generator=generator)

    def softmax():
        return logits.softmax(-1)

    def sample_top_p():
        probs = logits.softmax(-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < 0.95
        sorted_probs = sorted_probs * keep
        return order.gather(1, torch.multinomial(sorted_probs, 1, generator=generator))

    out = {}
    for name, fn in (("softmax", softmax), ("sample_top_p", sample_top_p)):
        for _ in range(5):
            fn()
        out[name] = statistics.median(_time(fn, device) for _ in range(max(steps // 4, 5)))
    return out


def _time(fn, device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sync_check(batch, vocab, device, generator) -> str | None:
    """Admission, 50 steps, releases and re-admissions with synchronising CUDA operations turned into errors;
    the error text, or None."""
    prompts = make_prompts(batch, device)
    logits_all = [torch.randn(batch, vocab, device=device, generator=generator) for _ in range(4)]
    slots = torch.arange(batch, device=device)
    slots_np = np.arange(batch)
    tokens = torch.full((batch,), WAIT0, dtype=torch.long, device=device)
    valid = torch.ones(batch, dtype=torch.bool, device=device)
    half = list(range(0, batch, 2))
    cuda = device.type == "cuda"
    if cuda:  # on the CPU (--dry-run) the same sequence runs, unchecked
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        components = build(batch, device, prompts)
        for step in range(60):
            if step == 50:  # a preemption (snapshot, release, restore), then requests leave and others come
                snaps = [comp.snapshot(1) for comp in components]
                for comp, snap in zip(components, snaps, strict=True):
                    comp.release([1], None)
                    if snap is not None:
                        comp.restore(1, snap)
                for comp in components:
                    comp.release(half, None)
                components[0].admit(half, [_spec(i + 1) for i in half], [prompts[i] for i in half])
                components[1].admit(half, [_member(i + batch) for i in half], [None] * len(half))
                components[2].admit(half, [_confident(i) for i in half], [None] * len(half))
            logits = logits_all[step % 4].clone()
            out_len = torch.full((batch,), 5 + step, dtype=torch.long, device=device)
            for comp in components:
                comp.observe(slots, tokens, out_len - 1, valid)
            for comp in components:
                comp.inspect(logits, slots, slots_np, out_len, None)
            for comp in components:
                logits = comp.apply(logits, slots, slots_np, out_len, None)
            tokens = logits.argmax(-1)
    except RuntimeError as exc:
        return str(exc)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        device, vocab, sizes, steps = torch.device("cpu"), 512, [8, 16], 6
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: use --dry-run on a CPU", file=sys.stderr)
            return 2
        device, vocab, sizes, steps = torch.device("cuda"), 151_936, [64, 256], args.steps
    generator = torch.Generator(device=device).manual_seed(0)
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "vocab": vocab,
        "dry_run": args.dry_run,
        "steps": [],
    }
    print(
        f"# TTSLogitsProcessor components per decode step, vocab {vocab}, float32 logits, {results['device']}"
    )
    print(
        "| B | step median µs | p20–p80 µs | softmax µs | step / softmax | top-p sampling µs | step / sampling |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in sizes:
        components = build(batch, device)
        run_steps(components, batch, vocab, 20 if not args.dry_run else 2, device, generator)  # warm-up
        if device.type == "cuda":
            timer, pending = cuda_timer()
            run_steps(components, batch, vocab, steps, device, generator, timer)
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) / 1e3 for s, e in pending]
        else:
            times = run_steps(
                components,
                batch,
                vocab,
                steps,
                device,
                generator,
                lambda s=None: time.perf_counter() - s if s else time.perf_counter(),
            )
        ref = reference_costs(batch, vocab, device, generator, steps)
        q = np.quantile(times, [0.2, 0.5, 0.8]) * 1e6
        row = {
            "B": batch,
            "median_us": float(q[1]),
            "p20_us": float(q[0]),
            "p80_us": float(q[2]),
            "softmax_us": ref["softmax"] * 1e6,
            "sample_top_p_us": ref["sample_top_p"] * 1e6,
        }
        results["steps"].append(row)
        print(
            f"| {batch} | {row['median_us']:.1f} | {row['p20_us']:.1f}–{row['p80_us']:.1f} | "
            f"{row['softmax_us']:.1f} | {row['median_us'] / row['softmax_us']:.2f}× | "
            f"{row['sample_top_p_us']:.1f} | {row['median_us'] / row['sample_top_p_us']:.2f}× |"
        )
    error = sync_check(sizes[-1], vocab, device, generator)
    if device.type == "cuda":
        results["sync_check"] = "no synchronisation" if error is None else error
    else:
        results["sync_check"] = "not checked (needs CUDA); the sequence ran" if error is None else error
    print(
        f"sync check (set_sync_debug_mode('error'), B={sizes[-1]}, admit, steps, release): {results['sync_check']}"
    )
    status = 0 if error is None else 1
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "processor_gpu.json").write_text(json.dumps(results, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
