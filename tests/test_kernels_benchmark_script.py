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
    assert [(r["B"], r["N"], r["path"]) for r in results["resample"]] == [
        (1, 4, "fused"),
        (2, 16, "fused"),
        (2, 80, "two_pass"),
    ]
    assert results["speed_check"]["verdict"] == "n/a"  # timings under the interpreter mean nothing
    assert "speed check: n/a" in printed
    assert {"speedup", "speedup_in_place", "never_slower", "fused_ms", "two_pass_ms"} <= set(
        results["resample"][0]
    )
    assert results["affine_verdict"] in ("PAYS", "DOES NOT PAY")
    for section in ("resample", "ancestors", "gather_configs", "affine_step", "graphs"):
        with open(tmp_path / f"resample_gpu_{section}.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and rows[0]["device"], section


def test_speed_check_verdicts(capsys):
    spec = importlib.util.spec_from_file_location("resample_gpu", ROOT / "benchmarks" / "resample_gpu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def row(b, n, speedup, in_place):
        verdict = "PASS" if min(speedup, in_place) >= 1.0 else "FAIL"
        return {"B": b, "N": n, "D": 4096, "MiB": 1.0, "path": "fused", "speedup": speedup,
                "speedup_in_place": in_place, "never_slower": verdict}  # fmt: skip

    passing = script.speed_check([row(1, 4, 1.3, 1.1), row(8, 256, 6.0, 15.0)], dry_run=False)
    assert passing["verdict"] == "PASS" and passing["worst_speedup"] == 1.1
    failing = script.speed_check([row(1, 4, 1.3, 0.97), row(8, 4, 0.9, 1.2)], dry_run=False)
    assert failing["verdict"] == "FAIL" and failing["failed"] == ["B=1 N=4 D=4096", "B=8 N=4 D=4096"]
    assert failing["line"].startswith("speed check: FAIL") and script.SPEED_CHECK_FAILED == 3
    assert script.speed_check([row(1, 4, 0.1, 0.1)], dry_run=True)["verdict"] == "n/a"
    assert "never slower than torch" in capsys.readouterr().out
