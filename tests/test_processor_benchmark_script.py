"""benchmarks/processor_gpu.py runs end to end on tiny CPU sizes (`--dry-run`), so the one-shot GPU run of
`benchmarks/gpu_check.sh` cannot fail on a stale script. Its numbers here mean nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_processor_benchmark_dry_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("processor_gpu", ROOT / "benchmarks" / "processor_gpu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--dry-run", "--out-dir", str(tmp_path), "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "| B | step median µs" in printed and "sync check" in printed
    results = json.loads((tmp_path / "processor_gpu.json").read_text())
    assert results["dry_run"] is True and [row["B"] for row in results["steps"]] == [8, 16]
    assert results["sync_check"].startswith("not checked")
