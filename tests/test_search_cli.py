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


def test_search_command_on_the_counting_model(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["search", "--method", "rbf", "--nfe", "12", "--steps", "3", "--reward", "brightness", "--quiet"]
    argv += ["--prompt", "a red apple", "--prompt", "a blue car", "--output", str(out), "--seed", "3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "NFE 12/12" in text and "counting model" in text
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


def test_search_command_smc_weighting_flags(tmp_path, capsys):
    argv = ["search", "--method", "smc", "--nfe", "12", "--steps", "3", "--reward", "brightness", "--quiet"]
    argv += ["--potential", "max", "--initial-weights", "reward", "--tempering", "exponential"]
    argv += ["--tempering-gamma", "0.5", "--time-grid", "uniform", "--output", str(tmp_path)]
    assert main(argv) == 0
    settings = json.loads((tmp_path / "summary.json").read_text())["settings"]
    assert (settings["potential"], settings["initial_weights"], settings["tempering"]) == (
        "max",
        "reward",
        "exponential",
    )
    assert settings["tempering_gamma"] == 0.5 and settings["time_grid"] == "uniform"
    capsys.readouterr()
    bad = ["search", "--method", "smc", "--nfe", "12", "--steps", "3", "--output", str(tmp_path)]
    assert main([*bad, "--tempering-gamma", "-1", "--tempering", "linear"]) == 2
    assert "tempering_gamma" in capsys.readouterr().out
    assert main([*bad, "--tempering-gamma", "0.5"]) == 2  # a rate without a schedule
    assert "tempering_gamma" in capsys.readouterr().out
    for flag, value in (("--potential", "diff"), ("--tempering", "cosine"), ("--time-grid", "vp")):
        with pytest.raises(SystemExit) as exc:
            main([*bad, flag, value])
        assert exc.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_search_demo_writes_both_plots(tmp_path, capsys):
    import inspect

    from diffusers_ttsplugin.search.demo import run_search_demo

    summary = run_search_demo(tmp_path, seeds=3)
    assert set(summary["toy"]) == set(summary["pipeline"]) == {"bon", "sop", "smc", "code", "svdd", "rbf"}
    for path in summary["plots"]:
        with open(path, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    assert all(v["nfe"] <= 30 for v in summary["pipeline"].values())
    assert all(set(point) == {"mean", "sem"} for curve in summary["toy"].values() for point in curve.values())
    printed = capsys.readouterr().out
    assert "NFE → " in printed and " ± " in printed and "3 seeds" in printed
    # Every point of the demo's curves is a mean over >= 32 independent searches unless asked otherwise.
    assert inspect.signature(run_search_demo).parameters["seeds"].default >= 32
    from ttsplugin.cli import build_parser

    assert build_parser().parse_args(["demo"]).search_seeds >= 32


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_demo_search_seeds_must_be_a_positive_int(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--search-seeds", value])
    assert exc.value.code == 2 and "argument --search-seeds" in capsys.readouterr().err
