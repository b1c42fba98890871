"""Shared harness for the thinking-control tests: a scripted model, a reference decoder, V1 and V2 drivers.

The scripted model gives deterministic logits per (request key, output position); `boost` raises chosen tokens
at chosen positions so that end attempts, start delimiters and waits happen where a test wants them. The same
sampler (greedy argmax, or a Gumbel draw keyed by (request key, position)) is used by every driver, so the V1
persistent-batch driver, the V2 slot driver and the pure-Python reference must produce identical tokens.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from vllm_ttsplugin.sampling import attempt_probability, counter_uniform
from vllm_ttsplugin.thinking import DECIDED_END, DECIDED_NOTHING, DECIDED_WAIT
from vllm_ttsplugin.thinking_reference import ThinkingTrace
from vllm_ttsplugin.vocab import SamplingView, ThinkingSpec, TokenizerVocab

# -- the scripted model -----------------------------------------------------------------------------------------


def _key_seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


@dataclass
class Req:
    """A test request: its params, prompt, scripted boosts and the tokens generated so far."""

    key: str
    params: object  # vllm.SamplingParams
    prompt: list[int]
    boost: dict[int, dict[int, float]] = field(default_factory=dict)  # position -> {token: added logit}
    output: list[int] = field(default_factory=list)
    max_tokens: int = 24
    twin: str | None = None  # draw logits and samples as the request with this key would (same "model")

    @property
    def model_key(self) -> str:
        return self.twin or self.key

    def __post_init__(self) -> None:
        self.prompt = list(self.prompt)

    @property
    def done(self) -> bool:
        return len(self.output) >= self.max_tokens


def model_logits(req: Req, position: int, vocab_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_key_seed(req.model_key, position))
    logits = torch.randn(vocab_size, generator=g) * 2.0
    for token, value in req.boost.get(position, {}).items():
        logits[token] += value
    return logits


def sample(req: Req, position: int, row: torch.Tensor) -> int:
    """Greedy argmax, or a Gumbel-max draw keyed by (request, position): independent of batching."""
    temperature = float(req.params.temperature)
    if temperature < 1e-5:
        return int(row.argmax())
    g = torch.Generator().manual_seed(_key_seed("gumbel", req.model_key, position))
    u = torch.rand(row.shape[0], generator=g).clamp_(1e-12, 1 - 1e-7)
    return int((row / temperature - torch.log(-torch.log(u))).argmax())


# -- the reference decoder (pure Python state machine + the spec's decision rule) -----------------------------


def _attempt_decision(spec: ThinkingSpec, z: torch.Tensor, tokens, seed: int, position: int) -> bool:
    """Greedy: the argmax is an attempt token; sampled: u(seed, position) < p(attempt tokens)."""
    s = spec.sampling
    if s.greedy:
        return int(z.argmax()) in tokens
    p = attempt_probability(
        z[None],
        torch.tensor([list(tokens)]),
        torch.tensor([s.temperature]),
        torch.tensor([s.top_k]) if s.top_k > 0 else None,
        torch.tensor([s.top_p]) if s.top_p < 1 else None,
        torch.tensor([s.min_p]) if s.min_p > 0 else None,
    )[0]
    u = counter_uniform(torch.tensor([seed]), torch.tensor([position]))[0]
    return bool(u < p)


def reference_step(trace: ThinkingTrace, logits: torch.Tensor, seed: int) -> tuple[torch.Tensor, int | None]:
    """The logits row the processor must produce for the trace's next token, and the recorded decision."""
    spec = trace.spec
    z = logits.clone()
    end0 = spec.end_ids[0]
    rule = trace.rule()
    if rule.scale_end:
        z[end0] = (
            z[end0] / spec.end_temperature if spec.end_temperature is not None else z[end0] + spec.end_bias
        )
    decision, forced = None, rule.token if rule.kind == "force" else None
    if rule.kind in ("decide_wait", "decide_end"):
        attempt = _attempt_decision(spec, z, rule.tokens, seed, trace.position)
        decision = (
            (DECIDED_WAIT if rule.kind == "decide_wait" else DECIDED_END) if attempt else DECIDED_NOTHING
        )
        if attempt:
            forced = spec.wait_ids[0] if rule.kind == "decide_wait" else end0
    if rule.kind == "exclude" or decision == DECIDED_NOTHING:
        z[list(rule.tokens)] = -math.inf
    if rule.kind == "merge":
        values = torch.cat([z[end0 : end0 + 1], z[list(rule.tokens)]])
        if spec.sampling.greedy:
            z[end0] = values.max()
        else:
            t = spec.sampling.temperature
            z[end0] = t * torch.logsumexp(values / t, dim=0)
        z[list(rule.tokens)] = -math.inf
    if forced is not None:
        z = torch.full_like(z, -math.inf)
        z[forced] = 0.0
    return z, decision


def reference_decode(req: Req, spec: ThinkingSpec | None, vocab_size: int, seed: int) -> list[int]:
    """Generate `req` alone with the reference; returns its tokens."""
    out: list[int] = []
    trace = ThinkingTrace.start(spec, req.prompt) if spec is not None else None
    for position in range(req.max_tokens):
        row = model_logits(req, position, vocab_size)
        decision = None
        if trace is not None:
            row, decision = reference_step(trace, row, seed)
        token = sample(req, position, row)
        out.append(token)
        if trace is not None:
            trace.observe(token, decision if decision is not None else DECIDED_NOTHING)
    return out


# -- drivers ------------------------------------------------------------------------------------------------------


def fake_vllm_config(max_num_seqs: int, seed: int = 0, vocab_size: int = 4096) -> SimpleNamespace:
    """The attributes of a VllmConfig that TTSLogitsProcessor reads (the tokenizer comes from `use_vocab`); the
    First Finish component it composes reads the vocabulary size and context length too."""
    return SimpleNamespace(
        speculative_config=None,
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs),
        model_config=SimpleNamespace(
            seed=seed, tokenizer="tiny", max_model_len=4096, get_vocab_size=lambda: vocab_size
        ),
    )


def use_vocab(monkeypatch, vocab: TokenizerVocab) -> None:
    """Make engine-side and admission-side tokenizer lookups return `vocab` (no engine in unit tests)."""
    import vllm_ttsplugin.processor as processor

    monkeypatch.setattr(processor, "_engine_vocab", lambda _config: vocab)
    monkeypatch.setattr(
        processor, "admission_context", lambda max_depth=12: processor.AdmissionContext(vocab)
    )


class V1Driver:
    """Drives TTSLogitsProcessor like vLLM's V1 InputBatch: adds fill holes, condense moves last -> hole,
    swaps, all reported through vLLM's own BatchUpdateBuilder."""

    def __init__(self, max_num_seqs: int, vocab_size: int, seed: int = 0) -> None:
        from vllm.v1.sample.logits_processor import BatchUpdateBuilder

        from vllm_ttsplugin import TTSLogitsProcessor

        self.proc = TTSLogitsProcessor(fake_vllm_config(max_num_seqs, seed), torch.device("cpu"), False)
        assert self.proc.runner == "v1"
        self.builder = BatchUpdateBuilder()
        self.batch: list[Req | None] = []
        self.vocab_size = vocab_size
        self.max_num_seqs = max_num_seqs
        self.log: list[str] = []

    @property
    def num_reqs(self) -> int:
        return sum(r is not None for r in self.batch)

    def add(self, req: Req) -> int:
        index = self.builder.pop_removed()
        if index is None:
            index = self.num_reqs
        while len(self.batch) <= index:
            self.batch.append(None)
        self.batch[index] = req
        self.builder.added.append((index, req.params, req.prompt, req.output))
        self.log.append(f"add {req.key}@{index}")
        return index

    def remove(self, req: Req) -> None:
        index = self.batch.index(req)
        self.batch[index] = None
        self.builder.removed_append(index)
        self.log.append(f"remove {req.key}@{index}")

    def condense(self) -> None:
        from vllm.v1.sample.logits_processor import MoveDirectionality

        removed = self.builder.removed
        if not removed:
            return
        last = len(self.batch) - 1
        while removed:
            while last >= 0 and self.batch[last] is None:
                last -= 1
            empty = self.builder.peek_removed()
            if last < 0 or empty >= last:
                break
            self.builder.pop_removed()
            self.batch[empty], self.batch[last] = self.batch[last], None
            self.builder.moved.append((last, empty, MoveDirectionality.UNIDIRECTIONAL))
            self.log.append(f"move {last}->{empty}")
            last -= 1
        while self.batch and self.batch[-1] is None:
            self.batch.pop()

    def swap(self, i: int, j: int) -> None:
        from vllm.v1.sample.logits_processor import MoveDirectionality

        self.batch[i], self.batch[j] = self.batch[j], self.batch[i]
        self.builder.moved.append((i, j, MoveDirectionality.SWAP))
        self.log.append(f"swap {i}<->{j}")

    def step(self) -> None:
        update = self.builder.get_and_reset(len(self.batch))
        self.proc.update_state(update)
        assert all(r is not None for r in self.batch), "driver must condense before stepping"
        if not self.batch:
            return
        logits = torch.stack([model_logits(r, len(r.output), self.vocab_size) for r in self.batch])
        logits = self.proc.apply(logits)
        for r, row in zip(self.batch, logits, strict=True):
            r.output.append(sample(r, len(r.output), row))


class _TorchWriteKernel:
    """Stands in for vLLM's `_apply_write_kernel` (Triton) so the real V2 RequestState runs on CPU tensors."""

    def __getitem__(self, grid):
        def run(out, stride, indices, starts, contents, cu_lens, group_ids, BLOCK_SIZE, MULTI_GROUP):  # noqa: N803
            assert not MULTI_GROUP
            flat = out.view(-1)
            prev = 0
            for i, (row, start, end) in enumerate(
                zip(indices.tolist(), starts.tolist(), cu_lens.tolist(), strict=False)
            ):
                if i >= grid[0]:
                    break
                base = row * stride + start
                flat[base : base + end - prev] = contents[prev:end].to(out.dtype)
                prev = end

        return run


def patch_v2_buffers_for_cpu(monkeypatch) -> None:
    import vllm.v1.worker.gpu.buffer_utils as buffer_utils

    monkeypatch.setattr(buffer_utils, "is_uva_available", lambda: False)
    monkeypatch.setattr(buffer_utils, "_apply_write_kernel", _TorchWriteKernel())


class V2Driver:
    """Drives TTSLogitsProcessor through vLLM's real V2 classes: `RequestState` (the model runner's per-slot
    buffers), the loader `build_custom_logits_processors`, `LogitsProcRequestState` and `LogitsContext`."""

    def __init__(self, max_num_seqs: int, vocab_size: int, max_model_len: int = 256, seed: int = 0) -> None:
        from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors
        from vllm.v1.worker.gpu.states import RequestState

        self.rs = RequestState(
            max_num_reqs=max_num_seqs,
            max_model_len=max_model_len,
            max_num_batched_tokens=max_model_len,
            num_speculative_steps=0,
            vocab_size=vocab_size,
            device=torch.device("cpu"),
        )
        # The entry point and the explicit name: two instances in one engine, the second inert.
        procs = build_custom_logits_processors(
            fake_vllm_config(max_num_seqs, seed), self.rs, False, ["vllm_ttsplugin:TTSLogitsProcessor"]
        )
        assert [p.is_serving for p in procs] == [True, False]
        self.procs = procs
        self.proc = procs[0]
        assert self.proc.runner == "v2"
        self.vocab_size = vocab_size
        self.reqs: dict[str, Req] = {}
        self.rng = random.Random(0)

    def add(self, req: Req, *, resumed: bool = False) -> None:
        tokens = list(req.prompt) + (list(req.output) if resumed else [])
        self.rs.add_request(req.key, len(req.prompt), tokens, 0, req.max_tokens)
        slot = self.rs.req_id_to_index[req.key]
        for proc in self.procs:
            proc.add_request(slot, req.params)
        self.reqs[req.key] = req
        self.rs.apply_staged_writes()
        for proc in self.procs:
            proc.apply_staged_writes()

    def remove(self, req: Req) -> None:
        self.rs.remove_request(req.key)
        del self.reqs[req.key]

    def step(self) -> None:
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

        keys = list(self.reqs)
        self.rng.shuffle(keys)  # rows are reordered every step in V2
        if not keys:
            return
        slots = np.array([self.rs.req_id_to_index[k] for k in keys], dtype=np.int32)
        slot_t = torch.from_numpy(slots.astype(np.int64))
        ctx = LogitsContext(
            expanded_idx_mapping=slot_t,
            idx_mapping=slot_t,
            idx_mapping_np=slots,
            expanded_local_pos=torch.zeros(len(keys), dtype=torch.long),
            input_ids=torch.zeros(len(keys), dtype=torch.long),
            pos=torch.zeros(len(keys), dtype=torch.long),
            seq_lens_upper_bound_np=np.zeros(len(keys), dtype=np.int32),
        )
        reqs = [self.reqs[k] for k in keys]
        logits = torch.stack([model_logits(r, len(r.output), self.vocab_size) for r in reqs])
        for proc in self.procs:
            logits = proc.apply(logits, ctx)
        total = self.rs.total_len.gpu
        for r, slot, row in zip(reqs, slots.tolist(), logits, strict=True):
            token = sample(r, len(r.output), row)
            r.output.append(token)
            # What the runner's postprocess does on the device: commit the token, grow total_len.
            self.rs.all_token_ids.gpu[slot, int(total[slot])] = token
            total[slot] += 1


def spec_of(params, vocab: TokenizerVocab) -> ThinkingSpec | None:
    """The resolved spec of a request (None when it carries no thinking control)."""
    from vllm_ttsplugin.components import ThinkingComponent

    return ThinkingComponent.parse(params, vocab)


__all__ = [
    "Req",
    "SamplingView",
    "V1Driver",
    "V2Driver",
    "model_logits",
    "patch_v2_buffers_for_cpu",
    "reference_decode",
    "reference_step",
    "sample",
    "spec_of",
    "use_vocab",
]
