"""The reasoner's tokenizer: a byte-level BPE trained with `tokenizers` on the task's own text.

Digits are split one per token (as Qwen's tokenizers do), so numbers are spelled digit by digit. ChatML control
tokens, `<think>` and `</think>` are special tokens; `<|im_end|>` is EOS. The chat template opens a think block
after the assistant header, like Qwen3's thinking templates.
"""

from __future__ import annotations

import random

from vllm_ttsplugin.reasoner.task import make_problems, trace

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END, THINK_START, THINK_END]
VOCAB_SIZE = 300

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n' }}"
    "{%- endif -%}"
)


def _corpus() -> list[str]:
    rng = random.Random(0)  # fixed: the tokenizer is the same for every training seed
    lines = ["user assistant system Answer: Wait, Final Answer: Hmm, Let me check."]
    for problem in make_problems(400, seed=0, split="train"):
        thinking, _ = trace(problem, rng)
        lines.append(f"user\n{problem.question}\nassistant\n{thinking}\nAnswer: {problem.answer}")
    return lines


def build_tokenizer():
    """A `transformers.PreTrainedTokenizerFast` with the chat template (deterministic)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_corpus(), trainer=trainer)
    raw.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=None, eos_token=IM_END, pad_token=PAD_TOKEN, model_max_length=1024
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
