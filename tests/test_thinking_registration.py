"""Registration: one class name for both vLLM runners, and installing ttsplugin never stops vLLM from starting."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

FQCN = "vllm_ttsplugin:TTSLogitsProcessor"


def test_installing_registers_nothing_in_the_shared_entry_point_group():
    # vllm.logits_processors is loaded by *both* runners into every engine; a class of the wrong interface there
    # makes vLLM refuse to start, and even a class of both interfaces would be instantiated a second time when a
    # user also passes --logits-processors. So ttsplugin is enabled explicitly (README).
    ours = [
        ep
        for ep in metadata.entry_points(group="vllm.logits_processors")
        if ep.value.startswith("vllm_ttsplugin")
    ]
    assert ours == []


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


def test_even_as_an_entry_point_neither_runner_refuses_it(monkeypatch):
    """What would happen if someone registered it in vllm.logits_processors: both loaders accept it, while a
    V1-only processor there is refused by the V2 runner (the hazard DESIGN.md describes)."""
    import importlib.metadata as importlib_metadata

    import vllm.v1.worker.gpu.sample.logits_processor.loader as v2_loader
    from vllm.v1.sample.logits_processor import MinPLogitsProcessor, _load_logitsprocs_plugins

    from vllm_ttsplugin import TTSLogitsProcessor

    def fake_entry_points(value):
        def entry_points(group=None, **_):
            if group != "vllm.logits_processors":
                return importlib_metadata.entry_points(group=group)
            return [metadata.EntryPoint(name="plugin", value=value, group=group)]

        return entry_points

    monkeypatch.setattr(importlib_metadata, "entry_points", fake_entry_points(FQCN))
    monkeypatch.setattr(v2_loader, "entry_points", fake_entry_points(FQCN))
    assert _load_logitsprocs_plugins() == [TTSLogitsProcessor]
    assert v2_loader._load_v2_logitsprocs_plugins() == [TTSLogitsProcessor]

    v1_only = f"{MinPLogitsProcessor.__module__}:{MinPLogitsProcessor.__name__}"
    monkeypatch.setattr(v2_loader, "entry_points", fake_entry_points(v1_only))
    with pytest.raises(ValueError, match="V1-interface plugins are not supported"):
        v2_loader._load_v2_logitsprocs_plugins()


def test_import_is_light():
    """`import vllm_ttsplugin` (and the config) needs neither vLLM nor transformers: both are imported lazily."""
    code = (
        "import sys, vllm_ttsplugin, vllm_ttsplugin.config;"
        "print('vllm' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
