"""The embedded reasoner: a ~0.8M-parameter Qwen2 model trained here to think before answering.

It solves chains of additions and subtractions (`57+8-3+9`) by writing one line per operation inside
`<think>...</think>` (catching some of its slips with "Wait, ..."), then `Answer: N`. Small enough to ship in the
repository and run on a CPU in seconds, real enough that thinking control and First Finish Search change its
accuracy. See `model/README.md` (the model card) and the README section "The embedded reasoner".

    from vllm_ttsplugin.reasoner import grade, make_problems, model_dir
    llm = vllm.LLM(str(model_dir()), dtype="float32", enable_chunked_prefill=False)
"""

from vllm_ttsplugin.reasoner.files import ReasonerFilesError, model_dir, verify_model_dir
from vllm_ttsplugin.reasoner.task import SPLITS, Problem, extract_answer, grade, make_problems

__all__ = [
    "SPLITS",
    "Problem",
    "ReasonerFilesError",
    "extract_answer",
    "grade",
    "make_problems",
    "model_dir",
    "verify_model_dir",
]
