"""The distribution's import names, console script and CLI help."""

import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["vllm_ttsplugin", "diffusers_ttsplugin", "ttsplugin_kernels", "ttsplugin"])
def test_packages_import(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().is_relative_to(ROOT)


@pytest.mark.parametrize("name", ["vllm_ttsplugin", "diffusers_ttsplugin"])
def test_no_lazy_public_name_is_also_a_submodule(name):
    # Importing a submodule binds it as an attribute of its package, which would then shadow a lazily resolved
    # public name of the same spelling (`from vllm_ttsplugin import first_finish` returned the module once another
    # module had imported `vllm_ttsplugin.first_finish`).
    package = importlib.import_module(name)
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert not submodules & set(package._LAZY)


def test_public_first_finish_is_the_function_after_its_module_is_imported():
    code = (
        "import vllm_ttsplugin.deepconf, vllm_ttsplugin.first_finish_search\n"
        "from vllm_ttsplugin import deep_conf, first_finish\n"
        "assert callable(first_finish) and callable(deep_conf), (first_finish, deep_conf)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_kernels_folder_is_installed_under_a_unique_name(tmp_path):
    # In a process started outside the checkout (as a user's would be), `ttsplugin_kernels` is our `kernels/`
    # folder and a top-level `kernels` is not us (Hugging Face's package of that name must not be shadowed).
    code = (
        "import importlib.util, ttsplugin_kernels; "
        "spec = importlib.util.find_spec('kernels'); "
        "print(ttsplugin_kernels.__file__); print(spec.origin if spec else None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    ours, other = out.stdout.split()
    assert Path(ours).resolve() == ROOT / "kernels" / "__init__.py"
    assert other == "None" or not Path(other).resolve().is_relative_to(ROOT)


def test_distribution_metadata_and_extras():
    dist = metadata.distribution("ttsplugin")
    extras = set(dist.metadata.get_all("Provides-Extra") or [])
    assert {"vllm", "diffusers", "triton", "dev"} <= extras
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts["ttsplugin"] == "ttsplugin.cli:main"


def _subparsers() -> dict:
    from ttsplugin.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_cli_option_is_explained(name):
    subparser = _subparsers()[name]
    assert subparser.description, f"`ttsplugin {name}` has no description"
    for action in subparser._actions:
        assert action.help, f"`ttsplugin {name} {'/'.join(action.option_strings) or action.dest}` has no help"


@pytest.mark.parametrize("argv", [[]] + [[name] for name in sorted(_subparsers())])
def test_cli_help_runs(argv):
    out = subprocess.run(
        [sys.executable, "-m", "ttsplugin", *argv, "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: ttsplugin")


def test_cli_without_command_prints_help():
    out = subprocess.run([sys.executable, "-m", "ttsplugin"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "COMMAND" in out.stdout
