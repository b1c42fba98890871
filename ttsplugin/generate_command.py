"""`ttsplugin generate`: one vLLM engine with `TTSLogitsProcessor`, every per-request knob as a flag.

The flags map one to one onto the per-request keys (`--max-think` is `tts_max_think`, ...), so what works here
works in `SamplingParams.extra_args` and in the server's `vllm_xargs`. Settings are checked before the engine
starts (the ones that need no tokenizer) and again at admission (delimiters, wait text against the vocabulary).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import fields
from typing import Any

from ttsplugin.demo import _workdir, chat_prompt, engine_kwargs, ensure_tiny_model, positive_int
from vllm_ttsplugin.confidence import CONFIDENCE_KEYS, DEFAULT_TOP_K, DEFAULT_WINDOW
from vllm_ttsplugin.config import KEY_PREFIX, ThinkingConfig

# Flag (argparse dest) -> per-request key: one flag per `ThinkingConfig` field, named after it.
THINKING_FLAGS = {f.name.removeprefix(KEY_PREFIX): f.name for f in fields(ThinkingConfig)}
TEXT_KEYS = tuple(f.name for f in fields(ThinkingConfig) if f.metadata.get("text"))
FIRST_FINISH_FLAGS = {"first_finish": "tts_first_finish"}
CONFIDENCE_FLAGS = {key.removeprefix(KEY_PREFIX): key for key in CONFIDENCE_KEYS}
FLAG_OF_KEY = {
    key: "--" + dest.replace("_", "-")
    for dest, key in {**THINKING_FLAGS, **FIRST_FINISH_FLAGS, **CONFIDENCE_FLAGS}.items()
}
DEFAULT_PROMPT = "47+5-8+3"  # a question of the embedded reasoner's task


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate with a vLLM engine under budget forcing, end-of-think scaling, First Finish Search and "
        "DeepConf's confidence stop",
        description=(
            "Load a model into vllm.LLM with TTSLogitsProcessor and generate, with the thinking controls "
            "(s1/m1 budget forcing, temperature-scaled end-of-think) and First Finish Search set per request from "
            "the flags below (each flag is the per-request key of the same name, e.g. --max-think = tts_max_think). "
            "Prints every completion with its thinking report (thinking tokens, waits injected, how thinking ended) "
            "and, with --first-finish, which samples won. Without --model the embedded reasoner is used (a tiny model "
            "trained here on arithmetic chains such as 47+5-8+3); --tiny-random builds the random-weight tiny "
            "model instead (gibberish text, real token accounting)."
        ),
    )
    p.add_argument(
        "--model", default=None, help="Hugging Face folder or hub id (default: the embedded reasoner)"
    )
    p.add_argument(
        "--tiny-random",
        action="store_true",
        help="use the random-weight tiny model (built under --workdir) instead of the embedded reasoner",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help=f"a user message; repeat for several (default: {DEFAULT_PROMPT!r})",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="send the prompts as they are instead of through the model's chat template",
    )
    sampling = p.add_argument_group("sampling (vLLM SamplingParams)")
    sampling.add_argument("--n", type=positive_int, default=1, help="samples per prompt (default: 1)")
    sampling.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default: 0)"
    )
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    sampling.add_argument("--top-k", type=int, default=0, help="top-k sampling; 0 = off (default: 0)")
    sampling.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    sampling.add_argument(
        "--max-tokens", type=positive_int, default=256, help="tokens per completion (default: 256)"
    )
    sampling.add_argument(
        "--logit-bias",
        action="append",
        default=None,
        metavar="TEXT=BIAS",
        help="add BIAS to the logit of TEXT's single token, e.g. '</think>=2'; repeatable",
    )
    thinking = p.add_argument_group(
        "thinking control (budget forcing, end-of-think scaling)",
        "text values (--wait, --answer-prefix, delimiters, --logit-bias TEXT) decode \\n and \\t",
    )
    for f in fields(ThinkingConfig):
        meta = f.metadata
        default = "" if f.default is None else f" (default: {f.default!r})"
        kwargs: dict[str, Any] = {"dest": f.name.removeprefix(KEY_PREFIX), "default": None}
        if meta["type"] in (int, float):
            kwargs["type"] = meta["type"]
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        thinking.add_argument(FLAG_OF_KEY[f.name], help=f"{f.name}: {meta['help']}{default}", **kwargs)
    ffs = p.add_argument_group("First Finish Search")
    ffs.add_argument(
        "--first-finish",
        type=int,
        default=None,
        metavar="K",
        help="tts_first_finish: once K of the --n samples finish naturally, the others are stopped (needs --n > 1)",
    )
    conf = p.add_argument_group("DeepConf confidence stop (per sample; see vllm_ttsplugin.confidence)")
    conf.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        metavar="C",
        help="tts_confidence_threshold: stop a sample once the mean token confidence of its last "
        "--confidence-window tokens falls below C",
    )
    conf.add_argument(
        "--confidence-window",
        type=int,
        default=None,
        metavar="W",
        help=f"tts_confidence_window: the window (default: {DEFAULT_WINDOW}; needs --confidence-threshold)",
    )
    conf.add_argument(
        "--confidence-top-k",
        type=int,
        default=None,
        metavar="K",
        help="tts_confidence_top_k: token confidence = -mean log-probability of the K most likely tokens "
        f"(default: {DEFAULT_TOP_K}; needs --confidence-threshold)",
    )
    engine = p.add_argument_group("engine")
    engine.add_argument(
        "--max-model-len", type=positive_int, default=2048, help="context length (default: 2048)"
    )
    engine.add_argument(
        "--kv-cache-mib",
        type=positive_int,
        default=None,
        help="KV cache size in MiB (default: 256 for the tiny model, vLLM's own sizing for --model)",
    )
    engine.add_argument(
        "--dtype", default=None, help="model dtype (default: float32 for the tiny model, else vLLM's auto)"
    )
    engine.add_argument(
        "--workdir",
        default=None,
        help="where the tiny model is built (default: $TTSPLUGIN_CACHE or ~/.cache/ttsplugin)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.set_defaults(func=run_generate_command)


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def _decode_escapes(text: str | None) -> str | None:
    # Shells make a newline awkward to pass: "\n" and "\t" are decoded ("\\" is a backslash); nothing else is.
    if text is None:
        return None
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def request_extra_args(args: argparse.Namespace) -> dict[str, Any]:
    """The per-request `extra_args` the flags ask for, validated (no tokenizer needed).

    Raises:
        ValueError: naming the flag, for a setting no model could accept.
    """
    from vllm_ttsplugin.confidence import parse_confidence_args
    from vllm_ttsplugin.config import ThinkingConfigError, TTSParamsError

    values = {key: getattr(args, dest) for dest, key in THINKING_FLAGS.items()}
    for key in TEXT_KEYS:
        values[key] = _decode_escapes(values[key])
    values = {k: v for k, v in values.items() if v is not None}
    try:
        extra = ThinkingConfig(**values).to_extra_args()
    except ThinkingConfigError as exc:
        raise ValueError(f"{FLAG_OF_KEY.get(exc.parameter, exc.parameter)}: {exc}") from None
    if args.first_finish is not None:
        k = args.first_finish
        if k < 1:
            raise ValueError(f"--first-finish: must be >= 1, got {k}")
        if args.n < 2 or k > args.n:
            raise ValueError(f"--first-finish: needs --n > 1 and K <= n (got K={k}, n={args.n})")
        extra["tts_first_finish"] = k
    confidence = {key: getattr(args, dest) for dest, key in CONFIDENCE_FLAGS.items()}
    confidence = {k: v for k, v in confidence.items() if v is not None}
    try:
        parse_confidence_args(confidence)
    except TTSParamsError as exc:
        raise ValueError(f"{FLAG_OF_KEY.get(exc.parameter, exc.parameter)}: {exc}") from None
    extra.update(confidence)
    return extra


def _logit_bias(tokenizer, specs: list[str] | None) -> dict[int, float] | None:
    if not specs:
        return None
    bias: dict[int, float] = {}
    for spec in specs:
        text, sep, value = spec.rpartition("=")
        if not sep or not text:
            raise ValueError(f"--logit-bias: expected TEXT=BIAS, got {spec!r}")
        try:
            amount = float(value)
        except ValueError:
            raise ValueError(f"--logit-bias: BIAS must be a number, got {value!r}") from None
        ids = tokenizer.encode(_decode_escapes(text), add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"--logit-bias: {text!r} is {len(ids)} tokens, not one")
        bias[ids[0]] = amount
    return bias


def generate(llm, args: argparse.Namespace) -> dict[str, Any]:
    """Run the requests the flags describe on `llm` (an `LLM` with `TTSLogitsProcessor`); return the record."""
    from vllm import SamplingParams

    from vllm_ttsplugin import (
        ThinkingConfig,
        first_finish_marker,
        first_finish_winners,
        is_first_finish_stopped,
        thinking_report,
    )

    extra = request_extra_args(args)
    tokenizer = llm.get_tokenizer()
    questions = args.prompt or [DEFAULT_PROMPT]
    prompts = list(questions) if args.raw else [chat_prompt(tokenizer, q) for q in questions]
    params = SamplingParams(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_tokens=args.max_tokens,
        logit_bias=_logit_bias(tokenizer, args.logit_bias),
        extra_args=extra or None,
    )
    thinking = ThinkingConfig.from_extra_args(
        extra, known_keys=(*FIRST_FINISH_FLAGS.values(), *CONFIDENCE_FLAGS.values())
    )
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    marker = first_finish_marker(tokenizer)
    record: dict[str, Any] = {"extra_args": extra, "seconds": round(seconds, 3), "prompts": []}
    for question, out in zip(questions, outputs, strict=True):
        reports = thinking_report(out, thinking or ThinkingConfig(), tokenizer)
        winners = (
            {c.index for c in first_finish_winners(out, extra["tts_first_finish"], marker=tokenizer)}
            if args.first_finish
            else ()
        )
        completions = []
        for completion, report in zip(out.outputs, reports, strict=True):
            entry = {
                "index": completion.index,
                "tokens": len(completion.token_ids),
                "finish_reason": completion.finish_reason,
                "thinking_tokens": report.thinking_tokens,
                "answer_tokens": report.answer_tokens,
                "waits": report.waits,
                "thinking_end": report.end,
                "text": completion.text,
            }
            if args.first_finish:
                entry["first_finish"] = (
                    "winner"
                    if completion.index in winners
                    else "stopped"
                    if is_first_finish_stopped(completion, tokenizer)
                    else "finished"
                )
            if CONFIDENCE_KEYS[0] in extra:
                stopped = completion.stop_reason is not None and completion.stop_reason == marker
                entry["confidence"] = "stopped" if stopped else "kept"  # (or by First Finish: same marker)
            completions.append(entry)
        record["prompts"].append({"prompt": question, "completions": completions})
    record["total_tokens"] = sum(c["tokens"] for p in record["prompts"] for c in p["completions"])
    return record


def print_record(record: dict[str, Any]) -> None:
    print(f"extra_args: {json.dumps(record['extra_args'])}")
    for entry in record["prompts"]:
        print(f"\n> {entry['prompt']}")
        for c in entry["completions"]:
            ffs = f", {c['first_finish']}" if "first_finish" in c else ""
            ffs += f", confidence {c['confidence']}" if "confidence" in c else ""
            print(
                f"[{c['index']}] {c['tokens']} tokens ({c['finish_reason']}{ffs}); thinking {c['thinking_tokens']} "
                f"tokens, {c['waits']} waits, end: {c['thinking_end']}; answer {c['answer_tokens']} tokens"
            )
            print(f"    {c['text']!r}")
    print(f"\n{record['total_tokens']} tokens in {record['seconds']:.2f} s")


def default_model(args: argparse.Namespace) -> str:
    """The model without --model: the embedded reasoner, or the random tiny one with --tiny-random."""
    if args.tiny_random:
        return str(ensure_tiny_model(_workdir(args), seed=0))
    from vllm_ttsplugin.reasoner import model_dir

    return str(model_dir())


def run_generate_command(args: argparse.Namespace) -> int:
    try:
        request_extra_args(args)  # fail before loading anything
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the record (JSON with --json)
        model = args.model or default_model(args)

    from vllm import LLM
    from vllm.exceptions import VLLMValidationError

    from vllm_ttsplugin import TTSLogitsProcessor

    llm = LLM(
        model,
        seed=args.seed,
        logits_processors=[TTSLogitsProcessor],
        dtype=args.dtype or ("auto" if args.model else "float32"),
        **engine_kwargs(args),
    )
    try:
        record = generate(llm, args)
    except (ValueError, VLLMValidationError) as exc:  # e.g. a delimiter this tokenizer lacks
        parameter = getattr(exc, "parameter", None)
        flag = FLAG_OF_KEY.get(parameter, parameter)
        print(f"error: {flag + ': ' if flag else ''}{exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print_record(record)
    return 0
