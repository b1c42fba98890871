"""`ttsplugin search` and the search part of `ttsplugin demo`, in process."""

from __future__ import annotations

import json

import pytest
import torch

from ttsplugin.cli import main


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_search_command_on_tiny_flux(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["search", "--method", "rbf", "--nfe", "12", "--steps", "3", "--reward", "brightness", "--quiet"]
    argv += ["--prompt", "a red apple", "--prompt", "a blue car", "--output", str(out), "--seed", "3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "NFE 12/12" in text and "tiny FluxPipeline" in text
    assert (out / "00_rbf.png").exists() and (out / "01_rbf.png").exists()
    trace = json.loads((out / "trace.json").read_text())
    assert (
        trace["method"] == "rbf"
        and trace["nfe"] == [12, 12]
        and trace["prompts"] == ["a red apple", "a blue car"]
    )
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["settings"]["num_chains"] == 2


def test_search_command_rejects_a_budget_too_small(tmp_path, capsys):
    assert main(["search", "--method", "bon", "--nfe", "2", "--steps", "3", "--output", str(tmp_path)]) == 2
    assert "smaller than method 'bon' needs" in capsys.readouterr().out
    assert (
        main(["search", "--method", "bon", "--block-size", "2", "--nfe", "9", "--output", str(tmp_path)]) == 2
    )
    assert "does not apply to method 'bon'" in capsys.readouterr().out


def test_search_demo_writes_both_plots(tmp_path):
    from diffusers_ttsplugin.search.demo import run_search_demo

    summary = run_search_demo(tmp_path, seeds=1)
    assert set(summary["toy"]) == set(summary["pipeline"]) == {"bon", "sop", "smc", "code", "svdd", "rbf"}
    for path in summary["plots"]:
        with open(path, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    assert all(v["nfe"] <= 24 for v in summary["pipeline"].values())
