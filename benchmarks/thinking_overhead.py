"""Throughput cost of thinking control in vLLM: every request carries budget controls vs. vanilla vLLM.

Same run, same prompts, same number of generated tokens (`ignore_eos`, fixed `max_tokens`; the controls change
which tokens, never how many), `detokenize=False`: vLLM's incremental detokenizer takes a slow path for added
tokens such as `</think>`, so its cost depends on *which* tokens were generated and would swamp the processor's
cost in either direction. Four arms, interleaved over several rounds so machine noise hits all alike:

- `vanilla`: an engine without the processor (its `vllm.logits_processors` entry point hidden while the engine
  is built);
- `enabled`: an engine as installing ttsplugin makes every engine: `TTSLogitsProcessor` from its entry point,
  requests without `tts_*` keys (the cost of having it installed);
- `controlled`: the same engine, every request with min/max budgets, a wait text, an answer prefix and TS;
- `confidence`: the same engine, every request tracking DeepConf's confidence (``tts_confidence_threshold`` set
  below any window, so nothing stops: top-20 token confidence and the window every step).

Also reports the share of each arm's thread CPU time spent inside `TTSLogitsProcessor` (apply + update_state,
validation excluded): a direct, same-run measure of the overhead that machine noise cannot fake.

Reports output tokens per second per arm and the ratio to vanilla, each the median over rounds of the ratio
measured back to back within a round. Two clocks: wall time, and the CPU time of the calling thread (the engine
runs in-process and vLLM's CPU backend uses one torch thread, so that thread does all the work; on a shared
machine it is the number to trust, since wall time also counts the time other processes held the cores).

    python benchmarks/thinking_overhead.py --requests 64 --max-tokens 64 --rounds 12
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: a tiny model built under --workdir)")
    p.add_argument("--hidden-size", type=int, default=128, help="hidden size of the built tiny model")
    p.add_argument("--layers", type=int, default=2, help="layers of the built tiny model")
    p.add_argument("--workdir", default=None, help="where to build the tiny model (default: a temp dir)")
    p.add_argument("--requests", type=int, default=64, help="concurrent requests per generate call")
    p.add_argument("--max-tokens", type=int, default=256, help="generated tokens per request")
    p.add_argument("--rounds", type=int, default=12, help="interleaved measurement rounds per arm")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument(
        "--confidence-window", type=int, default=2048, help="window of the confidence arm (default: 2048)"
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


@contextlib.contextmanager
def without_entry_point():
    """Hide ttsplugin's `vllm.logits_processors` entry point (both runners' loaders) while an engine is built."""
    import importlib.metadata as importlib_metadata

    original = importlib_metadata.entry_points

    def entry_points(**kwargs):
        found = original(**kwargs)
        if kwargs.get("group") != "vllm.logits_processors":
            return found
        return importlib_metadata.EntryPoints(ep for ep in found if not ep.value.startswith("vllm_ttsplugin"))

    importlib_metadata.entry_points = entry_points
    try:
        import vllm.v1.worker.gpu.sample.logits_processor.loader as v2_loader

        v2_original, v2_loader.entry_points = v2_loader.entry_points, entry_points
    except ImportError:  # pragma: no cover
        v2_loader = None
    try:
        yield
    finally:
        importlib_metadata.entry_points = original
        if v2_loader is not None:
            v2_loader.entry_points = v2_original


def main(argv=None) -> int:
    args = parse_args(argv)
    from vllm import LLM, SamplingParams, TokensPrompt

    from vllm_ttsplugin import ThinkingConfig
    from vllm_ttsplugin.testing import build_tiny_reasoning_model, small_engine_kwargs

    model = args.model
    if model is None:
        root = Path(args.workdir or tempfile.mkdtemp(prefix="tts-bench-"))
        model = str(root / f"tiny-h{args.hidden_size}-l{args.layers}")
        if not (Path(model) / "config.json").exists():
            build_tiny_reasoning_model(model, hidden_size=args.hidden_size, num_layers=args.layers)
    engine_kwargs = dict(
        seed=0, dtype="float32", max_num_seqs=max(args.requests, 8), **small_engine_kwargs(max_model_len=1024)
    )
    from vllm_ttsplugin import processor as tts_processor

    with without_entry_point():
        vanilla = LLM(model, **engine_kwargs)
    assert not tts_processor._SERVING, "the vanilla engine must not load TTSLogitsProcessor"
    enabled = LLM(model, **engine_kwargs)  # the processor comes from its entry point
    assert len(tts_processor._SERVING) == 1

    tokenizer = vanilla.get_tokenizer()
    questions = [f"Question {i}: what is {i} + {2 * i}?" for i in range(args.requests)]
    prompts = [
        TokensPrompt(
            prompt_token_ids=tokenizer.encode(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )
        )
        for q in questions
    ]
    end = tokenizer.encode("</think>", add_special_tokens=False)[0]
    common = dict(
        max_tokens=args.max_tokens, temperature=args.temperature, ignore_eos=True, logit_bias={end: 2.0}
    )
    config = ThinkingConfig(
        tts_min_think=args.max_tokens // 2,
        tts_max_think=args.max_tokens * 3 // 4,
        tts_wait="Wait, let me check",
        tts_answer_prefix="\nFinal Answer:",
        tts_end_bias=1.0,
    )
    confidence = {
        "tts_confidence_threshold": -1e9,
        "tts_confidence_window": args.confidence_window,
        "tts_confidence_top_k": 20,
    }
    arms = {
        "vanilla": (vanilla, [SamplingParams(seed=i, **common) for i in range(args.requests)]),
        "enabled": (enabled, [SamplingParams(seed=i, **common) for i in range(args.requests)]),
        "controlled": (enabled, [config.sampling_params(seed=i, **common) for i in range(args.requests)]),
        # DeepConf's confidence tracking on every request (a threshold no window falls below: same tokens count).
        "confidence": (
            enabled,
            [SamplingParams(seed=i, extra_args=dict(confidence), **common) for i in range(args.requests)],
        ),
    }
    for llm, params in arms.values():  # warm-up
        llm.generate(prompts[:4], params[:4], use_tqdm=False)
    from vllm_ttsplugin import TTSLogitsProcessor

    inside = {"t": 0.0}

    def timed(method):
        def wrapper(self, *a, **k):
            start = time.thread_time()
            try:
                return method(self, *a, **k)
            finally:
                inside["t"] += time.thread_time() - start

        return wrapper

    TTSLogitsProcessor.apply = timed(TTSLogitsProcessor.apply)
    TTSLogitsProcessor.update_state = timed(TTSLogitsProcessor.update_state)
    share: dict[str, list[float]] = {name: [] for name in arms}
    wall: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    tokens = args.requests * args.max_tokens
    for _ in range(args.rounds):
        for name, (llm, params) in arms.items():
            inside["t"] = 0.0
            start_wall, start_cpu = time.perf_counter(), time.thread_time()
            outs = llm.generate(prompts, params, use_tqdm=False)
            elapsed_cpu = time.thread_time() - start_cpu
            wall[name].append(tokens / (time.perf_counter() - start_wall))
            cpu[name].append(tokens / elapsed_cpu)
            share[name].append(inside["t"] / elapsed_cpu)
            assert sum(len(o.outputs[0].token_ids) for o in outs) == tokens

    def summary(rates):
        return {
            name: {
                "tokens_per_s": statistics.median(rates[name]),
                "ratio": statistics.median(a / b for a, b in zip(rates[name], rates["vanilla"], strict=True)),
            }
            for name in arms
        }

    result = {
        "command": " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": {"hidden_size": args.hidden_size, "layers": args.layers}
        if args.model is None
        else args.model,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "wall": summary(wall),
        "cpu": summary(cpu),
        "processor_share_of_cpu": {name: statistics.median(v) for name, v in share.items()},
    }
    print(f"{'arm':<12}{'wall tok/s':>12}{'ratio':>8}{'cpu tok/s':>12}{'ratio':>8}{'in processor':>14}")
    for name in arms:
        w, c = result["wall"][name], result["cpu"][name]
        inside_share = result["processor_share_of_cpu"][name]
        print(
            f"{name:<12}{w['tokens_per_s']:>12.1f}{w['ratio']:>7.3f}x{c['tokens_per_s']:>12.1f}{c['ratio']:>7.3f}x"
            f"{100 * inside_share:>13.1f}%"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
