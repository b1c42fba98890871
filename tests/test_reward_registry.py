"""The reward registry: entry points (ttsplugin's own and a third party's, installed for real as a dist-info on
sys.path), in-process registration, spec parsing, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch

from diffusers_ttsplugin import reward_registry
from diffusers_ttsplugin.reward_registry import (
    ENTRY_POINT_GROUP,
    available_rewards,
    load_reward,
    register_reward,
    unregister_reward,
)
from diffusers_ttsplugin.rewards import BrightnessReward, ColorReward, JPEGCompressibility, Reward

ROOT = Path(__file__).resolve().parents[1]

THIRD_PARTY = '''
import torch

from diffusers_ttsplugin.rewards import Reward


class Sharpness(Reward):
    """Mean absolute horizontal gradient, times `scale`."""

    def __init__(self, scale="1.0", device=None):
        self.scale = float(scale)
        self.device = device

    def score(self, images, prompts):
        return self.scale * (images[..., 1:] - images[..., :-1]).abs().flatten(1).mean(1)


def not_a_reward():
    return 42
'''


def _install(
    site: Path, dist: str, module: str, entry_points: dict[str, str], source: str = THIRD_PARTY
) -> None:
    """What `pip install` leaves for a package with entry points: the module and a dist-info folder."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}\n")


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _install(
        site,
        "ttsplugin-sharpness",
        "ttsplugin_sharpness",
        {"sharpness": "ttsplugin_sharpness:Sharpness", "broken": "ttsplugin_sharpness:not_a_reward"},
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("ttsplugin_sharpness", None)


@pytest.fixture
def registered():
    """Names registered in-process by a test, removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        reward_registry._REGISTERED.pop(name, None)


# --- ttsplugin's own rewards come through the same entry points ------------------------------------------------


def test_builtins_are_the_entry_points_of_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        ENTRY_POINT_GROUP
    ]
    installed = {
        ep.name: ep.value
        for ep in metadata.distribution("ttsplugin").entry_points
        if ep.group == ENTRY_POINT_GROUP
    }
    assert installed == declared, "the installed metadata is stale: run `pip install -e .` (or `make`)"
    rewards = available_rewards()
    for name, target in declared.items():
        assert rewards[name].target == target and rewards[name].provider == "ttsplugin"
        assert callable(rewards[name].load())  # every target imports
    assert {"jpeg", "clip", "pickscore", "aesthetic", "hpsv2", "imagereward", "vqascore"} <= set(rewards)


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ("jpeg", lambda r: isinstance(r, JPEGCompressibility) and r.quality == 95),
        (" jpeg:80 ", lambda r: r.quality == 80),
        ("brightness", lambda r: isinstance(r, BrightnessReward) and r.target is None),
        ("brightness:0.3", lambda r: r.target == 0.3),
        ("darkness", lambda r: r.target == 0.0),
        ("red", lambda r: isinstance(r, ColorReward) and r.color == (1.0, 0.0, 0.0)),
        ("blue", lambda r: r.color == (0.0, 0.0, 1.0)),
        ("color:0,1,0", lambda r: r.color == (0.0, 1.0, 0.0)),
        ("colour:0,0.5,1", lambda r: r.color == (0.0, 0.5, 1.0)),
        ("diffusers_ttsplugin.rewards:BrightnessReward", lambda r: isinstance(r, BrightnessReward)),
    ],
)
def test_builtin_specs(spec, check):
    assert check(load_reward(spec))


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("nosuch", ValueError, r"unknown reward 'nosuch'; available: .*jpeg.*pickscore"),
        (
            "no_such_module_xyz:thing",
            ValueError,
            r"cannot import reward: 'no_such_module_xyz' is neither a reward name nor a module, in "
            r"'no_such_module_xyz:thing'; available: .*jpeg",
        ),
        ("diffusers_ttsplugin.rewards:NoSuchThing", ValueError, "cannot import reward"),
        ("", ValueError, "NAME or NAME:ARG"),
        ("   ", ValueError, "NAME or NAME:ARG"),
        (None, ValueError, "NAME or NAME:ARG"),
        ("red:1", ValueError, "reward 'red' takes no argument"),
        ("color", ValueError, r"reward 'color' needs an argument \(NAME:ARG\)"),
        ("jpeg:abc", ValueError, "'abc' is not a valid int"),
        ("jpeg:0", ValueError, r"`quality` must be in \[1, 100\]"),
        ("brightness:2", ValueError, r"`target` must be in \[0, 1\]"),
        ("color:1,0", ValueError, "three values"),
        ("color:a,b,c", ValueError, "'a' is not a valid float"),
        ("clip:/nonexistent/clip", ValueError, "local model folder"),
        (
            "pickscore:/nonexistent/pickscore",
            FileNotFoundError,
            "neither a local folder nor an org/name hub id",
        ),
    ],
)
def test_bad_specs_are_explained(spec, error, message):
    with pytest.raises(error, match=message):
        load_reward(spec)


# --- a third-party package, installed as pip would ------------------------------------------------------------


def test_third_party_entry_point_loads_by_name(third_party):
    entry = available_rewards()["sharpness"]
    assert entry.provider == "ttsplugin-sharpness" and entry.target == "ttsplugin_sharpness:Sharpness"
    assert "ttsplugin_sharpness" not in sys.modules  # listing names imports nothing
    reward = load_reward("sharpness:2.5", device="cpu")
    assert type(reward).__name__ == "Sharpness" and reward.scale == 2.5 and reward.device == "cpu"
    assert load_reward("sharpness").device is None  # no device asked for: none passed
    images = torch.zeros(2, 3, 4, 4)
    images[1, :, :, ::2] = 1.0
    assert reward(images, ["a", "b"]).tolist() == [0.0, 2.5]
    with pytest.raises(TypeError, match="built a int, which is not callable"):
        load_reward("broken")


def test_third_party_reward_drives_the_search_command(third_party, tmp_path, capsys):
    from ttsplugin.cli import main

    out = tmp_path / "out"
    argv = ["search", "--method", "bon", "--nfe", "4", "--steps", "2", "--reward", "sharpness:3", "--quiet"]
    assert main([*argv, "--output", str(out), "--seed", "1"]) == 0
    trace = json.loads((out / "trace.json").read_text())
    assert trace["nfe"] == [4]
    best = float(capsys.readouterr().out.split("reward ")[1].split(",")[0])
    assert best > 0  # 3 x the mean gradient of a (noisy) tiny-FLUX image


def test_search_command_reports_bad_rewards(tmp_path, capsys):
    from ttsplugin.cli import main

    assert main(["search", "--reward", "nosuch", "--output", str(tmp_path)]) == 2
    text = capsys.readouterr().out
    assert text.startswith("error: --reward nosuch: unknown reward 'nosuch'; available: ") and "jpeg" in text
    assert main(["search", "--reward", "hpsv2:/nonexistent.pt", "--output", str(tmp_path)]) == 2
    assert "error: --reward hpsv2:/nonexistent.pt: " in capsys.readouterr().out


def test_third_party_name_shows_in_cli_help_of_a_fresh_process(third_party):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(third_party), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "ttsplugin", "search", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "sharpness" in " ".join(out.stdout.split())


def test_a_name_provided_twice_is_an_error_naming_both(third_party):
    _install(
        third_party,
        "other-rewards",
        "other_rewards",
        {"sharpness": "other_rewards:Sharpness", "jpeg": "other_rewards:Sharpness"},
    )
    assert "sharpness" not in available_rewards() and "jpeg" not in available_rewards()
    with pytest.raises(
        ValueError, match=r"'sharpness' is provided twice.*ttsplugin-sharpness.*other-rewards"
    ):
        load_reward("sharpness")
    with pytest.raises(
        ValueError,
        match=r"'jpeg' is provided twice \(other_rewards:Sharpness from other-rewards; .*:jpeg from ttsplugin\)",
    ):
        load_reward("jpeg")
    assert isinstance(load_reward("brightness"), BrightnessReward)  # the other names still work


def test_an_entry_point_that_does_not_import_fails_only_when_loaded(tmp_path, monkeypatch):
    _install(tmp_path, "bad-rewards", "bad_rewards", {"bad": "bad_rewards:Missing"}, source="x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "bad" in available_rewards()
    with pytest.raises(
        ImportError, match=r"reward 'bad' \(bad_rewards:Missing, from bad-rewards\) cannot be imported"
    ):
        load_reward("bad")
    assert isinstance(load_reward("jpeg"), JPEGCompressibility)
    sys.modules.pop("bad_rewards", None)


# --- in-process registration ---------------------------------------------------------------------------------


def test_register_reward_as_decorator_and_call(registered):
    @register_reward("test-constant")
    class Constant(Reward):
        def __init__(self, value="0.5"):
            self.value = float(value)

        def score(self, images, prompts):
            return torch.full((len(images),), self.value)

    registered.append("test-constant")
    assert Constant.__name__ == "Constant"  # the decorator returns the class unchanged
    assert available_rewards()["test-constant"].provider == "register_reward"
    assert load_reward("test-constant:2")(torch.zeros(3, 3, 2, 2), ["", "", ""]).tolist() == [2.0] * 3

    with pytest.raises(ValueError, match="'test-constant' is already registered by .*Constant"):
        register_reward("test-constant", lambda: None)
    register_reward("test-constant", lambda: BrightnessReward(), overwrite=True)
    assert isinstance(load_reward("test-constant"), BrightnessReward)
    with pytest.raises(
        ValueError, match="'jpeg' is already registered by diffusers_ttsplugin.reward_registry:jpeg"
    ):
        register_reward("jpeg", Constant)

    unregister_reward("test-constant")
    registered.remove("test-constant")
    with pytest.raises(ValueError, match="unknown reward 'test-constant'"):
        load_reward("test-constant")
    with pytest.raises(KeyError):
        unregister_reward("test-constant")


def test_overwrite_shadows_an_entry_point(registered):
    register_reward("jpeg", lambda quality=None: BrightnessReward(), overwrite=True)
    registered.append("jpeg")
    assert isinstance(load_reward("jpeg"), BrightnessReward)
    reward_registry._REGISTERED.pop("jpeg")
    registered.clear()
    assert isinstance(load_reward("jpeg"), JPEGCompressibility)


@pytest.mark.parametrize("name", ["", "Upper", "has:colon", "with space", "-dash", 3, None])
def test_register_reward_rejects_bad_names(name):
    with pytest.raises(ValueError, match="reward names are lowercase"):
        register_reward(name, lambda: None)


def test_register_reward_rejects_non_callables_and_bad_rewards(registered):
    with pytest.raises(TypeError, match="must be callable"):
        register_reward("test-bad", 42)

    class LatentOrNot:
        input = "pixels"

        def __call__(self, images, prompts):
            return torch.zeros(len(images))

    register_reward("test-bad", LatentOrNot)
    registered.append("test-bad")
    with pytest.raises(ValueError, match="`reward.input` must be 'image' or 'latent'"):
        load_reward("test-bad")


def test_device_is_passed_to_factories_that_take_it(registered):
    seen = {}

    def with_device(arg=None, *, device=None):
        seen["device"] = device
        return BrightnessReward()

    def with_kwargs(**kwargs):
        seen["kwargs"] = kwargs
        return BrightnessReward()

    register_reward("test-device", with_device)
    register_reward("test-kwargs", with_kwargs)
    registered.extend(["test-device", "test-kwargs"])
    load_reward("test-device", device="cpu")
    load_reward("test-kwargs", device=torch.device("cpu"))
    assert seen == {"device": "cpu", "kwargs": {"device": torch.device("cpu")}}
    load_reward("test-kwargs")
    assert seen["kwargs"] == {}


def test_registry_module_stays_import_light():
    code = "import sys, diffusers_ttsplugin.reward_registry as r; r.available_rewards(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_readme_documents_the_registry():
    text = (ROOT / "README.md").read_text()
    assert ENTRY_POINT_GROUP in text and "register_reward" in text and "load_reward" in text
