"""Rewards by name: one registry, fed by the `ttsplugin.rewards` entry-point group and by `register_reward`.

A reward is named in a *spec*, `NAME` or `NAME:ARG` (what `ttsplugin search --reward` takes). The name is looked up
in the registry, whose entries are *factories*: callables (functions or classes) that return a reward under the
contract of [`diffusers_ttsplugin.rewards`]. The factory is called as

- `factory()` for `NAME`, and `factory(ARG)` for `NAME:ARG` (ARG is the text after the first colon, as a string:
  a path, a hub id, a number — the factory parses it);
- plus `device=...` when a device is asked for and the factory's signature has a `device` parameter (or
  `**kwargs`).

Two ways into the registry, one lookup:

- **Entry points** (installed packages, ttsplugin's own built-ins included): in the package's `pyproject.toml`

      [project.entry-points."ttsplugin.rewards"]
      sharpness = "my_package.rewards:SharpnessReward"

  After `pip install`, `load_reward("sharpness:0.5")` imports `my_package.rewards` (only then: listing names imports
  nothing) and calls `SharpnessReward("0.5")`.
- **`register_reward(name)`** in a running process (a script, a notebook, a test), as a decorator or a call.

Names are lowercase (`[a-z0-9][a-z0-9_.-]*`). A name provided twice (by two distributions, or by a distribution
and `register_reward`) is an error when that name is loaded, naming both providers; `register_reward(...,
overwrite=True)` replaces an entry on purpose. `module:attribute` specs whose module is not a registered name import
that attribute directly (a factory called with no argument, as before the registry existed).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ENTRY_POINT_GROUP = "ttsplugin.rewards"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

RewardFactory = Callable[..., Any]


@dataclass(frozen=True)
class RewardEntry:
    """One registered reward name.

    Attributes:
        name (`str`): The name used in specs.
        target (`str`): Where the factory lives, `module:attribute`.
        provider (`str`): The distribution that declared the entry point, or `"register_reward"` for an
            in-process registration.
    """

    name: str
    target: str
    provider: str
    _factory: RewardFactory | None = None
    _entry_point: metadata.EntryPoint | None = None

    def load(self) -> RewardFactory:
        """Import and return the factory (entry points are imported only here)."""
        if self._factory is not None:
            return self._factory
        try:
            return self._entry_point.load()
        except (ImportError, AttributeError) as err:
            raise ImportError(
                f"reward {self.name!r} ({self.target}, from {self.provider}) cannot be imported: {err}"
            ) from err


_REGISTERED: dict[str, RewardEntry] = {}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"reward names are lowercase [a-z0-9][a-z0-9_.-]* (no ':'), got {name!r}")
    return name


def register_reward(name: str, factory: RewardFactory | None = None, *, overwrite: bool = False):
    """Register a reward factory under `name` in this process.

    Use as a decorator (`@register_reward("mine")` over a function or class) or call it with the factory. Installed
    packages should declare an entry point instead (see the module docstring), so that the name works in every
    process without importing them first.

    Args:
        name (`str`): The spec name, lowercase.
        factory (`Callable`, *optional*): The factory; omitted when used as a decorator.
        overwrite (`bool`, defaults to False): Replace an existing registration or entry point of that name.

    Returns:
        The factory (so the decorator leaves the function or class as it was).
    """
    _check_name(name)

    def _register(obj: RewardFactory) -> RewardFactory:
        if not callable(obj):
            raise TypeError(f"a reward factory must be callable, got {type(obj).__name__}")
        if not overwrite:
            existing = [_REGISTERED.get(name), *_entry_point_entries().get(name, [])]
            existing = [e for e in existing if e is not None]
            if existing:
                where = ", ".join(f"{e.target} ({e.provider})" for e in existing)
                raise ValueError(
                    f"reward {name!r} is already registered by {where}; pass overwrite=True to replace it"
                )
        target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
        _REGISTERED[name] = RewardEntry(name, target, "register_reward", _factory=obj)
        return obj

    return _register if factory is None else _register(factory)


def unregister_reward(name: str) -> None:
    """Remove an in-process registration (entry points stay: uninstall their package to drop them)."""
    if _REGISTERED.pop(name, None) is None:
        raise KeyError(f"reward {name!r} was not registered with register_reward")


def _entry_point_entries() -> dict[str, list[RewardEntry]]:
    found: dict[str, list[RewardEntry]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        provider = ep.dist.name if ep.dist is not None else "?"
        entry = RewardEntry(ep.name, ep.value, provider, _entry_point=ep)
        if any(e.target == entry.target and e.provider == provider for e in found.get(ep.name, [])):
            continue
        found.setdefault(ep.name, []).append(entry)
    return found


def _all_entries() -> dict[str, list[RewardEntry]]:
    entries = _entry_point_entries()
    for name, entry in _REGISTERED.items():
        # An in-process registration made with overwrite=True shadows the entry points of that name.
        entries[name] = [entry]
    return entries


def available_rewards() -> dict[str, RewardEntry]:
    """Every reward name this process can load, sorted, without importing any of them.

    Names provided twice are left out (loading one raises and names both providers). Entry points are read anew on
    each call, so a package installed (or put on `sys.path`) meanwhile shows up.
    """
    return {name: entries[0] for name, entries in sorted(_all_entries().items()) if len(entries) == 1}


def _unknown(spec: str, prefix: str = "unknown reward") -> ValueError:
    names = sorted(_all_entries())
    if not names:
        return ValueError(
            f"{prefix} {spec!r}: no rewards are registered at all — is ttsplugin installed "
            "(`pip install -e .` registers the entry points of pyproject.toml)?"
        )
    return ValueError(
        f"{prefix} {spec!r}; available: {', '.join(names)} "
        "(or module:attribute for a factory importable from your environment)"
    )


def _call_factory(name: str, factory: RewardFactory, arg: str | None, device: Any) -> Any:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: call them as they are
        signature = None
    args = () if arg is None else (arg,)
    kwargs = {}
    if device is not None and signature is not None:
        params = signature.parameters.values()
        if any(p.name == "device" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            kwargs["device"] = device
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as err:
            wants = "takes no argument" if arg is not None else "needs an argument (NAME:ARG)"
            raise ValueError(f"reward {name!r} {wants}: {err}") from err
    return factory(*args, **kwargs)


def _check_reward(spec: str, reward: Any) -> Any:
    from .rewards import reward_input

    if not callable(reward):
        raise TypeError(f"reward {spec!r} built a {type(reward).__name__}, which is not callable")
    reward_input(reward)
    return reward


def load_reward(spec: str, *, device: str | torch.device | None = None) -> Any:
    """Build the reward a spec names: `NAME`, `NAME:ARG`, or `module:attribute`.

    Args:
        spec (`str`): E.g. `"jpeg"`, `"jpeg:80"`, `"pickscore:/models/pickscore"`, `"my_pkg.rewards:Sharpness"`.
        device (`str` or `torch.device`, *optional*): Passed to factories that take a `device`.

    Returns:
        A reward callable `reward(images, prompts) -> tensor[N]`.

    Raises:
        ValueError: Unknown name (the message lists the available ones), an argument the factory does not take or
            a missing one, a name provided twice, or a bad argument value.
        ImportError: The reward's package (or optional extra) is missing; the message says what to install.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a reward spec is NAME or NAME:ARG, got {spec!r}")
    spec = spec.strip()
    name, sep, arg = spec.partition(":")
    entries = _all_entries().get(name)
    if entries is None:
        if sep and arg and name:
            return _check_reward(spec, _import_attribute(spec, name, arg))
        raise _unknown(spec)
    if len(entries) > 1:
        where = "; ".join(f"{e.target} from {e.provider}" for e in entries)
        raise ValueError(
            f"reward {name!r} is provided twice ({where}): uninstall one, or use module:attribute"
        )
    factory = entries[0].load()
    return _check_reward(spec, _call_factory(name, factory, arg if sep else None, device))


def _import_attribute(spec: str, module: str, attribute: str) -> Any:
    try:
        obj = getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as err:
        if err.name is not None and module.startswith(err.name):
            prefix = f"cannot import reward: {module!r} is neither a reward name nor a module, in"
            raise _unknown(spec, prefix) from err
        raise ValueError(f"cannot import reward {spec!r}: {err}") from err
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import reward {spec!r}: {err}") from err
    return obj() if isinstance(obj, type) else obj


# Built-in factories whose argument needs parsing (registered as entry points in ttsplugin's pyproject.toml, like
# every other reward). Model rewards take their path or hub id as the first argument and are registered directly.


def jpeg(quality: str | None = None):
    """DDPO's JPEG compressibility; `jpeg:Q` sets the JPEG quality (1-100, default 95)."""
    from .rewards import JPEGCompressibility

    return JPEGCompressibility() if quality is None else JPEGCompressibility(_number(quality, int, "jpeg"))


def brightness(target: str | None = None):
    """Mean luminance; `brightness:T` rewards closeness to T in [0, 1] instead."""
    from .rewards import BrightnessReward

    return BrightnessReward(None if target is None else _number(target, float, "brightness"))


def darkness():
    """Closeness of the mean luminance to 0."""
    from .rewards import BrightnessReward

    return BrightnessReward(target=0.0)


def color(rgb: str):
    """Closeness of every pixel to a colour: `color:R,G,B` with values in [0, 1]."""
    from .rewards import ColorReward

    values = tuple(_number(v, float, "color") for v in rgb.split(","))
    return ColorReward(values)


def red():
    """Closeness of every pixel to pure red."""
    return color("1,0,0")


def green():
    """Closeness of every pixel to pure green."""
    return color("0,1,0")


def blue():
    """Closeness of every pixel to pure blue."""
    return color("0,0,1")


def _number(text: str, kind: type, name: str):
    try:
        return kind(text)
    except ValueError as err:
        raise ValueError(f"reward {name!r}: {text!r} is not a valid {kind.__name__}") from err
