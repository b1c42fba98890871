"""In-engine budget forcing (`TTSLogitsProcessor`) vs. s1's re-prompt loop doing the same forcing.

Same prompts, same forcing (`tts_min_think` with "Wait", `tts_max_think` with a forced end and answer prefix),
greedy decoding, and `logit_bias` on the end token so the model tries to end thinking often (the tiny random
model rarely would on its own), so every prompt needs several waits. Arms:

- `in-engine`: one `generate` call; the processor injects waits and forces the end inside the engine.
- `s1 loop (text)`: s1's loop as its README ships it (the prompt is a string: generate until the end token,
  append the text and "Wait", re-tokenise, generate again with `min_tokens=1`, ...), prefix caching on.
- `s1 loop (tokens)`: the same loop on token ids with our exact semantics; its outputs must equal the in-engine
  outputs token for token (asserted), so this arm compares identical work.

Reports wall time and the calling thread's CPU time per arm (median over rounds; the engines run in-process with
one torch thread, so thread CPU time is robust to other load on a shared machine) and the speed-up of in-engine
forcing.

    python benchmarks/thinking_vs_reprompt.py --requests 32 --min-think 128 --max-think 160 --end-bias 2 --rounds 3
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--workdir", default=None, help="where to build the tiny model (default: a temp dir)")
    p.add_argument("--requests", type=int, default=32, help="prompts per run")
    p.add_argument("--min-think", type=int, default=128, help="tts_min_think")
    p.add_argument("--max-think", type=int, default=160, help="tts_max_think")
    p.add_argument(
        "--answer-tokens", type=int, default=16, help="tokens after thinking (max_tokens - max_think)"
    )
    p.add_argument(
        "--end-bias",
        type=float,
        default=2.0,
        help="logit_bias on the end token (how often the model tries to end)",
    )
    p.add_argument("--rounds", type=int, default=3, help="measurement rounds per arm")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vllm import LLM, SamplingParams, TokensPrompt

    from vllm_ttsplugin import ThinkingConfig, thinking_report
    from vllm_ttsplugin.reprompt import reprompt_budget_forcing
    from vllm_ttsplugin.testing import build_tiny_reasoning_model, small_engine_kwargs

    model = args.model
    if model is None:
        root = Path(args.workdir or tempfile.mkdtemp(prefix="tts-bench-"))
        model = str(root / "tiny-h128-l2")
        if not (Path(model) / "config.json").exists():
            build_tiny_reasoning_model(model)
    engine_kwargs = dict(
        seed=0,
        dtype="float32",
        enable_prefix_caching=True,
        max_num_seqs=max(args.requests, 8),
        **small_engine_kwargs(max_model_len=2048),
    )
    ours = LLM(model, logits_processors=["vllm_ttsplugin:TTSLogitsProcessor"], **engine_kwargs)
    vanilla = LLM(model, **engine_kwargs)
    tokenizer = ours.get_tokenizer()
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Question {i}: what is {i} + {3 * i}?"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(args.requests)
    ]
    token_prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    end = tokenizer.encode("</think>", add_special_tokens=False)[0]
    config = ThinkingConfig(
        tts_min_think=args.min_think, tts_max_think=args.max_think, tts_answer_prefix="\nFinal Answer:"
    )
    params = SamplingParams(
        max_tokens=args.max_think + args.answer_tokens, temperature=0, logit_bias={end: args.end_bias}
    )

    def in_engine():
        outs = ours.generate(
            [TokensPrompt(prompt_token_ids=p) for p in token_prompts],
            config.sampling_params(max_tokens=params.max_tokens, temperature=0, logit_bias=params.logit_bias),
            use_tqdm=False,
        )
        return [list(o.outputs[0].token_ids) for o in outs], outs

    def loop_tokens():
        return reprompt_budget_forcing(vanilla, token_prompts, config, params, mode="tokens")

    def loop_text():
        return reprompt_budget_forcing(vanilla, texts, config, params, mode="text")

    arms = {"in-engine": in_engine, "s1 loop (text)": loop_text, "s1 loop (tokens)": loop_tokens}
    for fn in arms.values():  # warm-up (also fills the prefix cache the way a long-running server would have)
        fn()
    wall: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    results = {}
    for _ in range(args.rounds):
        for name, fn in arms.items():
            ours.reset_prefix_cache()
            vanilla.reset_prefix_cache()
            start_wall, start_cpu = time.perf_counter(), time.thread_time()
            results[name] = fn()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.thread_time() - start_cpu)

    engine_ids, engine_outs = results["in-engine"]
    loop_ids = [r.token_ids for r in results["s1 loop (tokens)"]]
    assert engine_ids == loop_ids, "the token-level loop must reproduce the in-engine outputs exactly"
    reports = [thinking_report(o, config, ours)[0] for o in engine_outs]
    assert all(r.thinking_tokens >= args.min_think or r.end == "open" for r in reports)
    assert all(r.end != "budget" or r.thinking_tokens == args.max_think for r in reports)
    waits = statistics.mean(r.waits for r in reports)
    rounds_text = statistics.mean(r.rounds for r in results["s1 loop (text)"])
    rounds_tokens = statistics.mean(r.rounds for r in results["s1 loop (tokens)"])
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "command": " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]]),
        "requests": args.requests,
        "waits_per_request": waits,
        "budget_stops": sum(r.end == "budget" for r in reports),
        "thinking_tokens_mean": statistics.mean(r.thinking_tokens for r in reports),
        "loop_rounds_per_request": {"text": rounds_text, "tokens": rounds_tokens},
        "wall_s": med_wall,
        "cpu_s": med_cpu,
        "speedup_wall": {k: med_wall[k] / med_wall["in-engine"] for k in arms},
        "speedup_cpu": {k: med_cpu[k] / med_cpu["in-engine"] for k in arms},
    }
    print(
        f"{args.requests} prompts, {waits:.1f} waits and {result['thinking_tokens_mean']:.1f} thinking tokens per "
        f"completion ({result['budget_stops']} budget stops); loop rounds per prompt: text {rounds_text:.1f}, "
        f"tokens {rounds_tokens:.1f}"
    )
    print(f"{'arm':<18}{'wall s':>9}{'x in-engine':>13}{'cpu s':>9}{'x in-engine':>13}")
    for name in arms:
        print(
            f"{name:<18}{med_wall[name]:>9.2f}{result['speedup_wall'][name]:>12.2f}x"
            f"{med_cpu[name]:>9.2f}{result['speedup_cpu'][name]:>12.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
