"""`ttsplugin demo`: every feature end to end on locally built tiny models (or on models the user passes)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _workdir(args: argparse.Namespace) -> Path:
    root = (
        args.workdir
        or os.environ.get("TTSPLUGIN_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "ttsplugin")
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _header(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def ensure_tiny_model(workdir: Path, seed: int = 0) -> Path:
    """Build the tiny reasoning model under `workdir` once; later calls reuse the folder."""
    from vllm_ttsplugin.testing import build_tiny_reasoning_model

    path = workdir / f"tiny-reasoning-model-seed{seed}"
    if not (path / "tiny_model_info.json").exists():
        start = time.perf_counter()
        build_tiny_reasoning_model(path, seed=seed)
        print(f"built tiny reasoning model at {path} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"using tiny reasoning model at {path}")
    return path


def chat_prompt(tokenizer, question: str) -> str:
    """`question` as one user turn through the model's chat template, ready for the assistant's reply."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def engine_kwargs(args: argparse.Namespace) -> dict:
    """`vllm.LLM` keyword arguments: small and eager for the tiny model; vLLM's own memory sizing for `--model`
    (a fixed small KV cache would not hold `--max-model-len` tokens of a real model), unless `--kv-cache-mib`."""
    from vllm_ttsplugin.testing import small_engine_kwargs

    kv_cache_mib = getattr(args, "kv_cache_mib", None)
    if not args.model:
        return small_engine_kwargs(max_model_len=args.max_model_len, kv_cache_mib=kv_cache_mib or 256)
    kwargs: dict = {"max_model_len": args.max_model_len}
    if kv_cache_mib:
        kwargs["kv_cache_memory_bytes"] = kv_cache_mib * 2**20
    return kwargs


def demo_llm(args: argparse.Namespace, workdir: Path) -> None:
    """One vLLM engine with `TTSLogitsProcessor`: the embedded reasoner's accuracy with and without each control;
    with --model, plain generation, thinking control, then First Finish Search on the user's model."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the demo prints its own account of each step
    if not args.model:
        _header("vLLM: the embedded reasoner, with and without each test-time control")
        from vllm_ttsplugin.reasoner.demo import run_reasoner_demo

        run_reasoner_demo(num_problems=getattr(args, "problems", 16), seed=args.seed)
        return
    _header("vLLM")
    model = args.model

    from vllm import LLM, SamplingParams

    from vllm_ttsplugin import TTSLogitsProcessor

    start = time.perf_counter()
    llm = LLM(
        model,
        seed=args.seed,
        logits_processors=[TTSLogitsProcessor],
        dtype="auto" if args.model else "float32",  # the tiny model's own dtype (vLLM would pick bf16)
        **engine_kwargs(args),
    )
    print(f"loaded {model} into vllm.LLM with TTSLogitsProcessor in {time.perf_counter() - start:.1f} s")
    tokenizer = llm.get_tokenizer()
    questions = ["What is 2 + 2?", "A train travels 60 miles per hour for 2 hours. How far does it go?"]
    prompts = [chat_prompt(tokenizer, q) for q in questions]
    params = SamplingParams(max_tokens=48, temperature=0.0)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    for question, out in zip(questions, outputs, strict=True):
        completion = out.outputs[0]
        print(f"- {question!r}: {len(completion.token_ids)} tokens, finish={completion.finish_reason}")
        print(f"  {completion.text[:120]!r}")
    print(f"generated {sum(len(o.outputs[0].token_ids) for o in outputs)} tokens in {elapsed:.2f} s")
    demo_thinking(llm, args)
    demo_first_finish(llm, prompts, args)


def demo_first_finish(llm, prompts: list[str], args: argparse.Namespace, n: int = 8) -> None:
    """First Finish Search on the demo engine: n samples per prompt, the first to finish wins, vs. all n."""
    _header(f"First Finish Search (n={n})")
    from vllm import SamplingParams

    from vllm_ttsplugin import first_finish

    # The tiny model's random weights almost never emit EOS; a bias on it gives samples varied natural lengths,
    # as reasoning traces have. A real model (--model) needs none.
    bias = None if args.model else {llm.get_tokenizer().eos_token_id: 2.5}
    if bias:
        print("tiny model: EOS logit +2.5 so that samples end at varied lengths")

    def params(samples: int, extra_args: dict | None = None) -> SamplingParams:
        return SamplingParams(
            n=samples, temperature=1.0, seed=args.seed, max_tokens=128, logit_bias=bias, extra_args=extra_args
        )

    start = time.perf_counter()
    everything = llm.generate(prompts, params(n), use_tqdm=False)
    all_seconds = time.perf_counter() - start
    start = time.perf_counter()
    in_engine = llm.generate(prompts, params(n, {"tts_first_finish": 1}), use_tqdm=False)
    in_engine_seconds = time.perf_counter() - start
    start = time.perf_counter()
    results = first_finish(llm, prompts, n=n, k=1, sampling_params=params(1))
    ffs_seconds = time.perf_counter() - start
    for result, output in zip(results, everything, strict=True):
        lengths = sorted(len(c.token_ids) for c in output.outputs)
        winner = result.winner
        ended = (
            f"winner #{winner.index} ended after {len(winner.token_ids)} tokens"
            if winner
            else "no natural end"
        )
        print(f"- {ended}; all {n} to completion: lengths {lengths[0]}..{lengths[-1]}")
    all_tokens = sum(len(c.token_ids) for o in everything for c in o.outputs)
    rows = [
        (
            "in-engine (tts_first_finish=1)",
            sum(len(c.token_ids) for o in in_engine for c in o.outputs),
            in_engine_seconds,
        ),
        ("engine-level first_finish()", sum(r.num_tokens for r in results), ffs_seconds),
    ]
    print(f"all {n} to completion: {all_tokens} tokens in {all_seconds:.2f} s")
    for label, tokens, seconds in rows:
        print(
            f"FFS {label}: {tokens} tokens in {seconds:.2f} s ({all_tokens / max(tokens, 1):.1f}x fewer tokens, "
            f"{all_seconds / max(seconds, 1e-9):.1f}x faster)"
        )


def demo_thinking(llm, args: argparse.Namespace) -> None:
    """Budget forcing and TS in a real vLLM engine: requested vs realised thinking lengths."""
    _header("vLLM thinking control (budget forcing, end-of-think scaling)")
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    from vllm_ttsplugin import ThinkingConfig, thinking_report

    tokenizer = llm.get_tokenizer()
    prompt = chat_prompt(tokenizer, "What is 17 + 25?")
    # The random tiny model rarely ends thinking by itself; a logit bias on the end token makes it try to.
    end_ids = tokenizer.encode("</think>", add_special_tokens=False)
    bias = {end_ids[0]: 3.0} if len(end_ids) == 1 and not args.model else None
    rows = [
        ("no control", "-", None),
        ("max", "= 24", ThinkingConfig(tts_max_think=24, tts_answer_prefix="\nFinal Answer:")),
        ("min", ">= 48", ThinkingConfig(tts_min_think=48)),
        (
            "min + max",
            "32..40",
            ThinkingConfig(tts_min_think=32, tts_max_think=40, tts_answer_prefix="\nFinal Answer:"),
        ),
        ("TS bias +2", "shorter", ThinkingConfig(tts_end_bias=2.0)),
        ("TS bias -2", "longer", ThinkingConfig(tts_end_bias=-2.0)),
        ("TS temperature 0.5", "z / T", ThinkingConfig(tts_end_temperature=0.5)),
    ]
    print("8 sampled completions per request (temperature 1, 128 tokens); thinking tokens: mean [min, max]")
    print(f"{'request':<20}{'requested':>10}{'realised':>20}{'waits':>8}{'natural/budget/open':>22}")
    for label, requested, config in rows:
        params = SamplingParams(n=8, seed=args.seed, temperature=1.0, max_tokens=128, logit_bias=bias)
        if config is not None:
            params.extra_args = config.to_extra_args()
        try:
            (out,) = llm.generate([prompt], params, use_tqdm=False)
        except (ValueError, VLLMValidationError) as exc:  # e.g. --model without a detectable </think>
            print(f"{label:<20} rejected: {exc}")
            continue
        reports = thinking_report(out, config or ThinkingConfig(), llm)
        lengths = [r.thinking_tokens for r in reports]
        realised = f"{sum(lengths) / len(lengths):.1f} [{min(lengths)}, {max(lengths)}]"
        waits = sum(r.waits for r in reports) / len(reports)
        ends = "/".join(str(sum(r.end == e for r in reports)) for e in ("natural", "budget", "open"))
        print(f"{label:<20}{requested:>10}{realised:>20}{waits:>8.1f}{ends:>22}")
    greedy = ThinkingConfig(tts_max_think=12, tts_answer_prefix="\nFinal Answer:")
    (example,) = llm.generate([prompt], greedy.sampling_params(max_tokens=24, temperature=0), use_tqdm=False)
    print(f"greedy, tts_max_think=12: {example.outputs[0].text!r}")


def demo_diffusion(args: argparse.Namespace, workdir: Path) -> None:
    _header("diffusers")
    import torch

    counting = not args.pipeline
    if args.pipeline:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(args.pipeline).to(args.device)
        size = 512
        prompts = ["a photo of a red apple"] * 4
        print(f"loaded {type(pipe).__name__} from {args.pipeline}")
    else:
        from diffusers_ttsplugin.counting import count_objects, load_pipeline, make_prompts

        pipe = load_pipeline(device=args.device)
        size = 32
        targets = make_prompts(4, seed=args.seed)
        prompts = [p.prompt for p in targets]
        print("loaded the trained counting model (a FluxPipeline; diffusers_ttsplugin.counting)")
    import contextlib

    from diffusers_ttsplugin.search.demo import _single_thread

    start = time.perf_counter()
    # The counting model is tiny and latency-bound: one thread avoids OpenMP spinning on a shared CPU.
    with _single_thread() if counting else contextlib.nullcontext():
        images = pipe(
            prompts,
            num_inference_steps=10 if counting else 4,
            height=size,
            width=size,
            generator=torch.Generator(args.device).manual_seed(args.seed),
            output_type="pt",
        ).images
    elapsed = time.perf_counter() - start
    out_dir = workdir / "demo"
    out_dir.mkdir(exist_ok=True)
    for i, image in enumerate(pipe.image_processor.pt_to_numpy(images.cpu())):
        pipe.image_processor.numpy_to_pil(image[None])[0].save(out_dir / f"flux_{i}.png")
    print(f"{len(images)} images of {size}x{size} in {elapsed:.2f} s -> {out_dir}")
    if counting:
        for prompt, found in zip(prompts, count_objects(images), strict=True):
            seen = ", ".join(f"{n} {k}" for k, n in found.items() if n) or "nothing"
            print(f"- {prompt!r}: counted {seen}")


def demo_search(args: argparse.Namespace, workdir: Path) -> None:
    _header("particle search (diffusers_ttsplugin.InferenceScaler)")
    from diffusers_ttsplugin.search.demo import run_search_demo

    seeds = getattr(args, "search_seeds", 32)
    run_search_demo(workdir, seed=args.seed, device=args.device, pipeline=args.pipeline, seeds=seeds)


def run_demo(args: argparse.Namespace) -> int:
    workdir = _workdir(args)
    print(f"ttsplugin demo (workdir {workdir})")
    if not args.skip_llm:
        demo_llm(args, workdir)
    if not args.skip_diffusion:
        demo_diffusion(args, workdir)
    if not args.skip_diffusion and not getattr(args, "skip_search", False):
        demo_search(args, workdir)
    print("\ndemo finished")
    return 0
