"""Where the embedded reasoner goes wrong: the first faulty line of each wrong greedy answer (transformers).

    python benchmarks/reasoner_errors.py --problems 500

Kinds: "operand copy" (the line uses another operation than the problem's next one), "arithmetic" (right operands,
wrong result), "carried value" (the line does not start from the previous result), "stopped early", "extra
lines", "malformed". Wait lines are skipped. Greedy transformers outputs equal vLLM's (tests/test_reasoner_model.py).
"""

from __future__ import annotations

import argparse
import collections
import re

LINE = re.compile(r"(\d+)([+-])(\d+)=(\d+)$")


def first_fault(text: str, problem) -> str:
    lines = [x for x in text.split("</think>")[0].strip().split("\n") if x and not x.startswith("Wait")]
    value = problem.start
    for i, (op, operand) in enumerate(problem.operations):
        result = value + operand if op == "+" else value - operand
        if i >= len(lines):
            return "stopped early"
        match = LINE.match(lines[i])
        if not match:
            return "malformed"
        a, o, b, c = match.groups()
        if int(a) != value:
            return "carried value"
        if (o, int(b)) != (op, operand):
            return "operand copy"
        if int(c) != result:
            return "arithmetic"
        value = result
    return "extra lines" if len(lines) > len(problem.operations) else "answer line"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_ttsplugin.reasoner import grade, make_problems, model_dir

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    model = AutoModelForCausalLM.from_pretrained(model_dir()).eval()
    kinds: collections.Counter = collections.Counter()
    problems = make_problems(args.problems, seed=args.seed, split="test")
    for problem in problems:
        prompt = tokenizer.apply_chat_template(problem.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=300)
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False)
        if not grade(text, problem):
            kinds[first_fault(text, problem)] += 1
    print(f"{sum(kinds.values())} wrong of {len(problems)}: {dict(kinds)}")


if __name__ == "__main__":
    main()
