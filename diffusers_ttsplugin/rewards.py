"""Rewards for particle search: any callable `reward(images, prompts) -> tensor[N]`, plus built-ins.

The contract the search relies on:

- `images` is a float tensor `[N, 3, H, W]` with values in `[0, 1]` (the decoded Tweedie estimates x̂₀ of the
  particles), `prompts` a list of N strings (the prompt of each image). A reward built on [`Reward`] with
  `input = "latent"` receives the latents x̂₀ (`[N, ...]`, the model's frame) instead and skips decoding.
- It returns N scores, higher is better: a tensor, array or list of shape `[N]` (not `[N, 1]`). The search checks the
  shape and the values (see [`check_rewards`]).
- **Non-finite scores.** `-inf` means "reject this sample": it is never chosen while any finite alternative exists,
  and gets SMC weight zero. `NaN` and `+inf` are errors by default (`nonfinite="raise"`): a reward that produces them
  is broken, and silently ranking garbage is worse than stopping. With `nonfinite="reject"` NaN is treated as `-inf`;
  `+inf` always raises (it would win every comparison). A search whose chosen sample ends with no finite reward
  raises rather than returning it.

Built-ins need no downloads: [`JPEGCompressibility`] (DDPO's compressibility reward), [`BrightnessReward`],
[`ColorReward`], [`AnalyticTargetReward`] and [`MixtureModeReward`] (for the analytic flow of
`diffusers_ttsplugin.toy`) and
[`CLIPReward`], an adapter for a CLIP-style model you have in a local folder.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

RewardFn = Callable[[torch.Tensor, list[str]], Any]

NONFINITE_POLICIES = ("raise", "reject")


def reward_input(reward: RewardFn) -> str:
    """What a reward wants to see: "image" (decoded, `[N, 3, H, W]` in [0, 1]) or "latent" (x̂₀ as is)."""
    kind = getattr(reward, "input", "image")
    if kind not in ("image", "latent"):
        raise ValueError(f"`reward.input` must be 'image' or 'latent', got {kind!r}")
    return kind


def check_rewards(
    values: Any, num: int, *, nonfinite: str = "raise", where: str = "", device: torch.device | None = None
) -> torch.Tensor:
    """Validate what a reward returned and bring it to a float64 tensor `[num]`.

    Args:
        values: The reward's output (tensor, numpy array, list, ...).
        num (`int`): How many images were scored.
        nonfinite (`str`, defaults to "raise"): "raise" — NaN or ±inf raise `ValueError` (except -inf, which means
            "reject"); "reject" — NaN becomes -inf. +inf always raises.
        where (`str`): Context for error messages (method, step).
        device: Device of the returned tensor (defaults to the values' own, or CPU).

    Returns:
        `torch.Tensor` of shape `[num]`, float64 (exact for any float input: the search compares and weights
        rewards in float64, so candidates that differ only below float32's resolution or range never tie).
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"`nonfinite_rewards` must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    ctx = f" ({where})" if where else ""
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(values, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ValueError(f"the reward returned {type(values).__name__}, not numbers{ctx}: {err}") from err
    if tuple(tensor.shape) != (num,):
        raise ValueError(
            f"the reward must return one score per image, shape ({num},); got shape {tuple(tensor.shape)}{ctx}"
        )
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"the reward must return real numbers, got dtype {tensor.dtype}{ctx}")
    tensor = tensor.to(dtype=torch.float64, device=device if device is not None else tensor.device)
    pos_inf = torch.isposinf(tensor)
    if bool(pos_inf.any()):
        raise ValueError(
            f"the reward returned +inf for {int(pos_inf.sum())} of {num} images{ctx}; +inf cannot be ranked "
            "(return a large finite score instead)"
        )
    nan = torch.isnan(tensor)
    if bool(nan.any()):
        if nonfinite == "raise":
            raise ValueError(
                f"the reward returned NaN for {int(nan.sum())} of {num} images{ctx}; fix the reward or pass "
                "nonfinite_rewards='reject' to treat NaN as -inf (never chosen)"
            )
        tensor = torch.where(nan, torch.full_like(tensor, -math.inf), tensor)
    return tensor


class Reward:
    """Optional base class for rewards: batching, and a choice of what the reward sees.

    Subclasses implement [`Reward.score`]. Calling the object splits the inputs into chunks of `batch_size` (all at
    once when `None`), scores each under `torch.no_grad()` and concatenates the scores.

    Attributes:
        input (`str`, defaults to "image"): "image" — the search decodes x̂₀ and passes `[N, 3, H, W]` in [0, 1];
            "latent" — the search passes x̂₀ in the model's latent frame and never decodes (cheap rewards on
            latents, and the analytic flow).
        batch_size (`int`, *optional*): Largest chunk scored at once.
    """

    input: str = "image"
    batch_size: int | None = None

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        size = self.batch_size or max(len(images), 1)
        if len(images) <= size:
            return self.score(images, prompts)
        chunks = [
            torch.as_tensor(self.score(images[i : i + size], prompts[i : i + size])).reshape(-1)
            for i in range(0, len(images), size)
        ]
        return torch.cat(chunks)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    return (
        (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )


class JPEGCompressibility(Reward):
    """Compressibility as in DDPO: minus the size in kB of the image saved as JPEG (higher = simpler image).

    Args:
        quality (`int`, defaults to 95): JPEG quality used for the encoding (DDPO uses 95).
    """

    def __init__(self, quality: int = 95):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"`quality` must be in [1, 100], got {quality}")
        self.quality = int(quality)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from PIL import Image

        sizes = []
        for array in _to_uint8_hwc(images):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="JPEG", quality=self.quality)
            sizes.append(buffer.tell() / 1000.0)
        return -torch.tensor(sizes, dtype=torch.float64)


class BrightnessReward(Reward):
    """Mean luminance (Rec. 601 weights) of the image, or how close it is to a target.

    Args:
        target (`float`, *optional*): With a target in [0, 1] the score is `-|mean luminance - target|` (best 0);
            without one it is the mean luminance itself (brighter is better).
    """

    def __init__(self, target: float | None = None):
        if target is not None and not 0.0 <= float(target) <= 1.0:
            raise ValueError(f"`target` must be in [0, 1], got {target}")
        self.target = None if target is None else float(target)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        # Accumulated in float64: near-identical images (a search's proposals) must not tie by rounding.
        weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=torch.float64)
        pixels = images.to(torch.float64)
        luminance = torch.einsum("nchw,c->n", pixels, weights) / (images.shape[-1] * images.shape[-2])
        return luminance if self.target is None else -(luminance - self.target).abs()


class ColorReward(Reward):
    """Closeness of every pixel to a target colour: minus the mean squared RGB distance (best 0, worst -3).

    Args:
        color (`tuple[float, float, float]`, defaults to red): Target RGB in [0, 1].
    """

    def __init__(self, color: Sequence[float] = (1.0, 0.0, 0.0)):
        color = tuple(float(c) for c in color)
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"`color` must be three values in [0, 1], got {color}")
        self.color = color

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        target = torch.tensor(self.color, device=images.device, dtype=torch.float64).view(1, 3, 1, 1)
        return -((images.to(torch.float64) - target) ** 2).sum(dim=1).mean(dim=(1, 2))


class AnalyticTargetReward(Reward):
    """A reward with a known optimum for the analytic flow: a Gaussian bump around a target point.

    `r(x) = exp(-||x - target||² / (2 · d · bandwidth²))` for x ∈ R^d (flattened), so 0 < r ≤ 1 and r = 1 exactly at
    the target. Put the target on a rare mode of the toy mixture and the search has to find that mode.

    Args:
        target (`Sequence[float] | torch.Tensor`): The optimum (any shape; compared after flattening).
        bandwidth (`float`, defaults to 1.0): Per-dimension width of the bump.
    """

    input = "latent"

    def __init__(self, target: Sequence[float] | torch.Tensor, bandwidth: float = 1.0):
        self.target = torch.as_tensor(target, dtype=torch.float32).flatten()
        if not float(bandwidth) > 0:
            raise ValueError(f"`bandwidth` must be > 0, got {bandwidth}")
        self.bandwidth = float(bandwidth)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = images.reshape(len(images), -1).to(torch.float64)  # float64: far points stay apart (no underflow)
        if x.shape[1] != self.target.numel():
            raise ValueError(f"samples have {x.shape[1]} values, the target has {self.target.numel()}")
        sq = ((x - self.target.to(x.device, torch.float64)) ** 2).sum(dim=1)
        return torch.exp(-sq / (2 * x.shape[1] * self.bandwidth**2))


class MixtureModeReward(Reward):
    """For the analytic flow: the probability that a sample belongs to one mode of the data mixture.

    `r(x) = P(k = component | x₀ = x)` under `mixture` (a `diffusers_ttsplugin.toy.GaussianMixture`), in [0, 1]; the
    optimum 1 is reached by any sample deep inside that mode. Like a VQA score it saturates, and it is scored on
    Tweedie estimates during the search. Put it on a rare mode and plain sampling rarely scores well.

    Computed in log space and returned in float64: at high noise the Tweedie estimate sits between the modes, where
    the probability of an outer mode is ~1e-49 (below float32's smallest number, which would make every candidate
    tie at 0). Probabilities below float64's range (~1e-308) still underflow; `log=True` never does.

    Args:
        mixture: Anything with `component_log_posterior(x) -> [N, K]` (log responsibilities at t = 0).
        component (`int`): The mode to reward.
        log (`bool`, defaults to False): Return log P instead (unbounded below, optimum 0, exact everywhere).
    """

    input = "latent"

    def __init__(self, mixture, component: int, log: bool = False):
        if not hasattr(mixture, "component_log_posterior"):
            raise TypeError("`mixture` must have `component_log_posterior(x)` (a toy.GaussianMixture)")
        if not 0 <= int(component) < mixture.num_components:
            raise ValueError(f"`component` must be in [0, {mixture.num_components}), got {component}")
        self.mixture = mixture
        self.component = int(component)
        self.log = bool(log)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = images.reshape(len(images), -1)
        log_p = self.mixture.component_log_posterior(x)[:, self.component].to(torch.float64)
        return log_p if self.log else log_p.exp()


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPReward(Reward):
    """Text–image similarity from a CLIP-style model in a local folder (CLIP, SigLIP, ... via `transformers`).

    The folder must hold a model with `get_image_features` / `get_text_features` (what `save_pretrained` of
    `CLIPModel` or `SiglipModel` writes) and its tokenizer; `preprocessor_config.json` (image size, mean, std) is
    used when present, else the model's `vision_config.image_size` and CLIP's mean/std. Images are resized and
    normalised in torch (batched, on the model's device). The score is the cosine similarity of the image and prompt
    embeddings times `scale`. Prompt embeddings are cached.

    Args:
        path (`str` or `Path`): Local folder (nothing is downloaded: `local_files_only=True`).
        device (`str` or `torch.device`, *optional*): Where the model runs (default: CPU).
        dtype (`torch.dtype`, *optional*): Model dtype (default: float32).
        scale (`float`, defaults to 1.0): Multiplies the cosine similarity (CLIPScore uses 100 or 2.5).
        batch_size (`int`, defaults to 32): Images scored per forward pass.
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        scale: float = 1.0,
        batch_size: int = 32,
    ):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"CLIPReward needs a local model folder; {str(path)!r} is not a directory")
        self.path = str(path)
        self.scale = float(scale)
        self.batch_size = int(batch_size)
        self._device = torch.device(device or "cpu")
        self._model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32)
        self._model.to(self._device).eval()
        for needed in ("get_image_features", "get_text_features"):
            if not hasattr(self._model, needed):
                raise ValueError(f"the model in {self.path} has no `{needed}`: not a CLIP-style model")
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        size, mean, std = None, _CLIP_MEAN, _CLIP_STD
        processor_file = path / "preprocessor_config.json"
        if processor_file.exists():
            config = json.loads(processor_file.read_text())
            crop = config.get("crop_size") or config.get("size")
            if isinstance(crop, dict):
                crop = crop.get("height") or crop.get("shortest_edge")
            size = crop
            mean = tuple(config.get("image_mean", mean))
            std = tuple(config.get("image_std", std))
        vision = getattr(self._model.config, "vision_config", None)
        self.image_size = int(size or getattr(vision, "image_size", 224))
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._text_cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _pooled(output: Any) -> torch.Tensor:
        return output.pooler_output if hasattr(output, "pooler_output") else output

    def _text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            max_length = getattr(self._tokenizer, "model_max_length", 77)
            max_length = 77 if max_length is None or max_length > 10_000 else max_length
            tokens = self._tokenizer(
                missing, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
            ).to(self._device)
            inputs = {"input_ids": tokens["input_ids"]}
            if "attention_mask" in tokens and "siglip" not in type(self._model).__name__.lower():
                inputs["attention_mask"] = tokens["attention_mask"]
            features = self._pooled(self._model.get_text_features(**inputs)).float()
            features = torch.nn.functional.normalize(features, dim=-1)
            for prompt, feature in zip(missing, features, strict=True):
                self._text_cache[prompt] = feature
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = images.to(self._device, torch.float32)
        pixels = torch.nn.functional.interpolate(
            pixels,
            size=(self.image_size, self.image_size),
            mode="bicubic",
            antialias=True,
            align_corners=False,
        ).clamp(0, 1)
        pixels = (pixels - self._mean.to(self._device)) / self._std.to(self._device)
        dtype = next(self._model.parameters()).dtype
        features = self._pooled(self._model.get_image_features(pixel_values=pixels.to(dtype))).float()
        features = torch.nn.functional.normalize(features, dim=-1)
        similarity = (features * self._text_embeddings(prompts)).sum(dim=-1)
        return (self.scale * similarity).to(images.device)


def reward_from_spec(spec: str, device: str | torch.device | None = None) -> RewardFn:
    """Build a reward from a short text spec (what the CLI's `--reward` takes): `NAME`, `NAME:ARG` or
    `module:attribute`. The names come from the reward registry (entry-point group `ttsplugin.rewards`); see
    [`diffusers_ttsplugin.reward_registry.load_reward`].
    """
    from .reward_registry import load_reward

    return load_reward(spec, device=device)
