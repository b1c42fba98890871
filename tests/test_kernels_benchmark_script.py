"""benchmarks/resample_gpu.py runs end to end (tiny CPU sizes, kernels under the interpreter), so the one-shot
GPU run cannot fail on a stale script. Its numbers here mean nothing."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from ttsplugin_kernels.utils import resolve_backend, triton_available

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_benchmark_dry_run_writes_every_section(tmp_path, capsys):
    import torch

    if resolve_backend("auto", torch.device("cpu")) != "triton":
        pytest.skip("needs TRITON_INTERPRET=1 (set by tests/conftest.py without a GPU)")
    spec = importlib.util.spec_from_file_location("resample_gpu", ROOT / "benchmarks" / "resample_gpu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "## resample" in printed and "fused affine step at" in printed
    results = json.loads((tmp_path / "resample_gpu.json").read_text())
    assert results["dry_run"] is True
    assert [(r["B"], r["N"]) for r in results["resample"]] == [(1, 4), (2, 16)]
    assert results["affine_verdict"] in ("PAYS", "DOES NOT PAY")
    for section in ("resample", "ancestors", "gather_configs", "affine_step", "graphs"):
        with open(tmp_path / f"resample_gpu_{section}.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and rows[0]["device"], section
