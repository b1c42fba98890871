"""Registration: installing ttsplugin registers `TTSLogitsProcessor` in vLLM's `vllm.logits_processors` group,
both runners' loaders accept it (from the entry point and by name), and a second instance in one engine is inert."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
import torch

FQCN = "vllm_ttsplugin:TTSLogitsProcessor"


def test_installing_registers_the_processor_in_the_shared_entry_point_group():
    import vllm.v1.worker.gpu.sample.logits_processor.loader as v2_loader
    from vllm.v1.sample.logits_processor import _load_logitsprocs_plugins

    from vllm_ttsplugin import TTSLogitsProcessor

    ours = [
        ep
        for ep in metadata.entry_points(group="vllm.logits_processors")
        if ep.value.startswith("vllm_ttsplugin")
    ]
    assert [(ep.name, ep.value) for ep in ours] == [("ttsplugin", FQCN)]
    # Both runners load it from the installed metadata: a class of either interface alone would stop the other
    # runner from starting (DESIGN.md), this one implements both.
    assert TTSLogitsProcessor in _load_logitsprocs_plugins()
    assert TTSLogitsProcessor in v2_loader._load_v2_logitsprocs_plugins()


def test_one_name_passes_both_runners_loaders():
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1Interface
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2Interface
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    from vllm_ttsplugin import TTSLogitsProcessor

    assert issubclass(TTSLogitsProcessor, V1Interface) and issubclass(TTSLogitsProcessor, V2Interface)
    assert _load_logitsprocs_by_fqcns([FQCN]) == [TTSLogitsProcessor]
    assert _load_logitsprocs_by_fqcns([TTSLogitsProcessor]) == [TTSLogitsProcessor]
    assert _load_v2_logitsprocs_by_fqcns([FQCN]) == [TTSLogitsProcessor]
    validate = build_custom_logits_processors_params_validator([FQCN])
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="tts_min_think"):
        validate(SamplingParams(extra_args={"tts_min_think": -1}))


def test_a_v1_only_plugin_is_what_the_v2_loader_refuses(monkeypatch):
    """The hazard of the shared group (DESIGN.md): a V1-interface class there makes the V2 runner refuse to start."""
    import importlib.metadata as importlib_metadata

    import vllm.v1.worker.gpu.sample.logits_processor.loader as v2_loader
    from vllm.v1.sample.logits_processor import MinPLogitsProcessor

    def entry_points(group=None, **_):
        if group != "vllm.logits_processors":
            return importlib_metadata.entry_points(group=group)
        value = f"{MinPLogitsProcessor.__module__}:{MinPLogitsProcessor.__name__}"
        return [metadata.EntryPoint(name="plugin", value=value, group=group)]

    monkeypatch.setattr(v2_loader, "entry_points", entry_points)
    with pytest.raises(ValueError, match="V1-interface plugins are not supported"):
        v2_loader._load_v2_logitsprocs_plugins()


class _Tokenizer:
    """The tokenizer facts the processor needs, for ids 0..63: EOS 2, `<think>` 10, `</think>` 11, `Wait` 12."""

    eos_token_id = 2
    _ids = {"<think>": 10, "</think>": 11, "Wait": 12}

    def __len__(self):
        return 64

    def encode(self, text, add_special_tokens=False):
        return [self._ids.get(text, 13)]

    def decode(self, ids, skip_special_tokens=False):
        names = {v: k for k, v in self._ids.items()}
        return "".join(names.get(i, "x") for i in ids)


def _controlled_batch(monkeypatch):
    """A BatchUpdate adding one request with `tts_max_think=1` (its prompt opens thinking) and one plain request."""
    from thinking_helpers import use_vocab
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdateBuilder

    from vllm_ttsplugin.vocab import TokenizerVocab

    use_vocab(monkeypatch, TokenizerVocab(_Tokenizer(), 64))
    builder = BatchUpdateBuilder()
    builder.added.append((0, SamplingParams(extra_args={"tts_max_think": 1}), [5, 10], [7]))
    builder.added.append((1, SamplingParams(), [5, 10], [7]))
    return builder.get_and_reset(2)


def test_a_second_instance_in_one_engine_is_inert(monkeypatch):
    """The entry point and `--logits-processors` give one engine two instances, built from the same config: the
    first serves, the second leaves every row alone (the edit happens once). Another engine gets its own."""
    from thinking_helpers import fake_vllm_config
    from vllm.v1.sample.logits_processor import _load_custom_logitsprocs

    from vllm_ttsplugin import TTSLogitsProcessor

    classes = _load_custom_logitsprocs([FQCN])  # what vLLM's V1 runner builds: plugins first, then the flag
    assert classes.count(TTSLogitsProcessor) == 2
    batch = _controlled_batch(monkeypatch)
    config = fake_vllm_config(4, vocab_size=64)
    first, second = (cls(config, torch.device("cpu"), False) for cls in classes[-2:])
    assert (first.is_serving, second.is_serving) == (True, False)
    logits = torch.zeros(2, 64)
    for proc in (first, second):
        proc.update_state(batch)
    for proc in (first, second):
        logits = proc.apply(logits)
    assert int(logits[0].argmax()) == 11 and torch.isinf(logits[0]).sum() == 63  # forced once, by `first`
    assert torch.equal(logits[1], torch.zeros(64))
    other = TTSLogitsProcessor(fake_vllm_config(4, vocab_size=64), torch.device("cpu"), False)
    assert other.is_serving


def test_speculative_decoding_leaves_an_installed_processor_inert(monkeypatch):
    """The V2 runner builds plugins even with speculative decoding: the processor must not stop the engine."""
    from thinking_helpers import fake_vllm_config

    from vllm_ttsplugin import TTSLogitsProcessor

    config = fake_vllm_config(4, vocab_size=64)
    config.speculative_config = object()
    proc = TTSLogitsProcessor(config, torch.device("cpu"), False)
    assert not proc.is_serving
    proc.update_state(_controlled_batch(monkeypatch))
    logits = torch.randn(2, 64)
    assert torch.equal(proc.apply(logits.clone()), logits)
    assert proc.add_request(0, None) is False


def test_import_is_light():
    """`import vllm_ttsplugin` (and the config) needs neither vLLM nor transformers: both are imported lazily."""
    code = (
        "import sys, vllm_ttsplugin, vllm_ttsplugin.config;"
        "print('vllm' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
