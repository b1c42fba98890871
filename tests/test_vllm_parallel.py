"""Opt-in: `benchmarks/vllm_parallel.py`'s checks with real engines (tensor_parallel_size=2 offline; a
`--data-parallel-size 2` server with and without TTSMiddleware; a `--tensor-parallel-size 2` server). About 15
minutes on 2 shared cores and it needs
≥ 2 cores, so it runs only with TTSPLUGIN_PARALLEL_TESTS=1; the decisions themselves are tested without engines in
tests/test_ffs_data_parallel.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        os.environ.get("TTSPLUGIN_PARALLEL_TESTS") != "1",
        reason="starts 5 multi-process engines; set TTSPLUGIN_PARALLEL_TESTS=1",
    ),
]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vllm_parallel.py"


def test_tensor_and_data_parallel_checks(tiny_model_dir, tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert run.returncode == 0 and lines and all(line.startswith("PASS") for line in lines), (
        run.stdout + run.stderr
    )
