"""Tiny reasoning models built locally, for tests, demos and benchmarks (nothing is downloaded).

`build_tiny_reasoning_model` writes a Hugging Face folder that both `vllm.LLM` and transformers load: a
Qwen2-architecture causal LM with random weights and a byte-level BPE tokenizer trained here on an embedded
corpus, with a ChatML chat template. The think delimiters are parameters, so tests can cover the shapes real
models use: single added tokens (`<think>`/`</think>`, Qwen3/R1), special tokens, and multi-token text
delimiters such as s1's `<|im_start|>think` / `<|im_start|>answer`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

DelimiterMode = Literal["tokens", "special", "text"]

# ChatML control tokens, always special (as in Qwen and s1's tokenizer).
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Small English + arithmetic-reasoning corpus: enough for BPE to learn whole words such as "think", "answer",
# "Wait", "Final" and digits, so wait texts and answer prefixes tokenize into a few tokens like in real models.
_CORPUS = """
Let me think about this problem step by step. First, we need to find the value of x.
Wait, I should double check the arithmetic. Hmm, maybe there is a simpler way.
Alternatively, we can factor the expression and solve for the roots.
So the answer is 42. Final Answer: The final answer is \\boxed{42}.
The sum of 17 and 25 is 42. The product of 6 and 7 is also 42.
A train leaves the station at 3 pm and travels at 60 miles per hour.
How far does it go in 2 hours? It travels 120 miles. Therefore the answer is 120.
We know that a squared plus b squared equals c squared for a right triangle.
If a = 3 and b = 4 then c = 5. Let me verify: 9 + 16 = 25, and the square root of 25 is 5.
Think carefully. Think again. I think the answer is correct. Answer: 5. The answer is 5.
Wait, let me reconsider. Actually the previous step had an error: 12 times 12 is 144, not 124.
The probability of rolling a six on a fair die is one sixth, so 1/6.
Return your final response within \\boxed{}. The patient presents with fever and cough.
Question: what is 2 + 2? Reasoning: two plus two is four. Answer: 4.
numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000
The quick brown fox jumps over the lazy dog. Hello world, this is a tiny model.
system user assistant think answer reasoning solution question
"""


@dataclass(frozen=True)
class TinyModelInfo:
    """What `build_tiny_reasoning_model` wrote (also saved as `tiny_model_info.json` in the folder)."""

    path: str
    think_start: str
    think_end: str
    delimiters_as: str
    think_start_ids: list[int]
    think_end_ids: list[int]
    eos_token_id: int
    vocab_size: int
    template_opens_think: bool
    seed: int


_WORDS = (
    "the a an of to in is was for on that with as by at from this it be are or which we can not have has one two "
    "three four five six seven eight nine ten number value sum product difference ratio equation solve find "
    "compute check verify answer question problem step first second next then therefore so because since if "
    "else when where how what why who total each every all some many more less than equal greater smaller "
    "square root prime even odd integer fraction decimal percent angle triangle circle area length width height "
    "speed time distance hours minutes rate cost price money apples oranges students teacher class school book "
    "patient doctor fever cough symptom diagnosis treatment drug dose blood heart lung cell gene protein "
    "reason think thought idea maybe perhaps actually indeed hmm wait alternatively consider suppose assume "
    "let us note recall hence thus finally result correct wrong error mistake again carefully"
).split()


def _corpus_lines(think_start: str, think_end: str) -> list[str]:
    import random

    rng = random.Random(1234)  # fixed: the tokenizer must be identical for every seed and run
    lines = [line for line in _CORPUS.strip().splitlines() if line]
    # Synthetic sentences widen the vocabulary (~2k tokens) so sampled text is made of words, not bytes.
    for _ in range(3000):
        words = rng.choices(_WORDS, k=rng.randint(6, 16))
        lines.append(
            " ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":"]) + f" {rng.randint(0, 999)}"
        )
    # Delimiter-bearing lines teach BPE the words the delimiters are made of (e.g. "think", "answer").
    lines += [f"{think_start} let me think {think_end} the answer is 7"] * 8
    return lines


def _train_tokenizer(think_start: str, think_end: str, delimiters_as: DelimiterMode, vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = [PAD_TOKEN, IM_START, IM_END]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(think_start, think_end), trainer=trainer)
    if delimiters_as == "tokens":
        tokenizer.add_tokens(
            [AddedToken(d, normalized=False, special=False) for d in (think_start, think_end)]
        )
    elif delimiters_as == "special":
        tokenizer.add_special_tokens(
            [AddedToken(d, normalized=False, special=True) for d in (think_start, think_end)]
        )
    return tokenizer


def _chat_template(think_start: str, template_opens_think: bool) -> str:
    opener = (think_start + "\n") if template_opens_think else ""
    opener_json = json.dumps(opener)
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        "{{ '<|im_start|>assistant\\n' + " + opener_json + " }}"
        "{%- endif -%}"
    )


def build_tiny_reasoning_model(
    path: str | os.PathLike,
    *,
    think_start: str = "<think>",
    think_end: str = "</think>",
    delimiters_as: DelimiterMode = "tokens",
    template_opens_think: bool = True,
    seed: int = 0,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 4096,
    initializer_range: float = 0.1,
) -> TinyModelInfo:
    """Write a tiny Qwen2 reasoning model (random weights, locally trained tokenizer) to `path`.

    Args:
        path: Output folder (created). Load it with `vllm.LLM(path)` or `AutoModelForCausalLM.from_pretrained`.
        think_start: Start-of-thinking delimiter, e.g. `"<think>"` or s1's `"<|im_start|>think"`.
        think_end: End-of-thinking delimiter, e.g. `"</think>"` or s1's `"<|im_start|>answer"`.
        delimiters_as: `"tokens"` adds each delimiter as one ordinary added token (Qwen3/R1 style),
            `"special"` adds them as special tokens (skipped when decoding with `skip_special_tokens`),
            `"text"` leaves them to the BPE, so they are several tokens (s1's `<|im_start|>` + `think`).
        template_opens_think: Whether the chat template ends the generation prompt inside an open think block
            (appends `think_start` + newline), as Qwen3/R1 templates do.
        seed: Seeds the weights; the same arguments and seed give identical files.
        vocab_size: BPE vocabulary target (the corpus may yield fewer merges).
        hidden_size, num_layers, num_heads, num_kv_heads, max_position_embeddings: Qwen2 config.
        initializer_range: Std of the random weights; 0.1 keeps greedy decoding from collapsing onto one token.

    Returns:
        A `TinyModelInfo` with the delimiter token ids and EOS id.
    """
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if delimiters_as not in ("tokens", "special", "text"):
        raise ValueError(f"`delimiters_as` must be 'tokens', 'special' or 'text', got {delimiters_as!r}")
    if not think_start or not think_end or think_start == think_end:
        raise ValueError("`think_start` and `think_end` must be non-empty and different")

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer(think_start, think_end, delimiters_as, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        model_max_length=max_position_embeddings,
    )
    tokenizer.chat_template = _chat_template(think_start, template_opens_think)
    tokenizer.save_pretrained(out)

    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    # Exactly the tokenizer's size, so every id the model can sample decodes to text.
    model_vocab = len(tokenizer)
    config = Qwen2Config(
        vocab_size=model_vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    config.dtype = "float32"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)
    model.save_pretrained(out, safe_serialization=True)

    info = TinyModelInfo(
        path=str(out),
        think_start=think_start,
        think_end=think_end,
        delimiters_as=delimiters_as,
        think_start_ids=tokenizer.encode(think_start, add_special_tokens=False),
        think_end_ids=tokenizer.encode(think_end, add_special_tokens=False),
        eos_token_id=eos_id,
        vocab_size=model_vocab,
        template_opens_think=template_opens_think,
        seed=seed,
    )
    (out / "tiny_model_info.json").write_text(json.dumps(asdict(info), indent=2))
    return info


def load_tiny_model_info(path: str | os.PathLike) -> TinyModelInfo:
    """Read the `TinyModelInfo` saved beside a tiny model."""
    return TinyModelInfo(**json.loads((Path(path) / "tiny_model_info.json").read_text()))


def default_tiny_model_dir() -> Path:
    """Where the demo caches its tiny model: `$TTSPLUGIN_CACHE` or `~/.cache/ttsplugin`."""
    root = os.environ.get("TTSPLUGIN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ttsplugin")
    return Path(root) / "tiny-reasoning-model"


def small_engine_kwargs(max_model_len: int = 2048, kv_cache_mib: int = 256, **overrides) -> dict:
    """`vllm.LLM` keyword arguments for a small, fast, in-process CPU engine (tests, demo, benchmarks).

    Without `kv_cache_memory_bytes` vLLM's CPU backend reserves ~13 GiB for the KV cache; eager mode skips
    graph capture. Set `VLLM_ENABLE_V1_MULTIPROCESSING=0` before importing vLLM to keep the engine in-process.
    """
    kwargs = dict(
        enforce_eager=True,
        kv_cache_memory_bytes=kv_cache_mib * 2**20,
        max_model_len=max_model_len,
    )
    kwargs.update(overrides)
    return kwargs
