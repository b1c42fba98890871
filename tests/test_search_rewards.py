"""Rewards: the output contract (shape, non-finite values), the built-ins and a local CLIP-style model."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from diffusers_ttsplugin.rewards import (
    AnalyticTargetReward,
    BrightnessReward,
    CLIPReward,
    ColorReward,
    JPEGCompressibility,
    MixtureModeReward,
    Reward,
    check_rewards,
    reward_from_spec,
)


def test_check_rewards_accepts_sequences_and_casts():
    out = check_rewards([1, 2.5, -math.inf], 3)
    assert out.dtype == torch.float64 and out.tolist() == [1.0, 2.5, -math.inf]
    assert check_rewards(np.array([0.5]), 1).tolist() == [0.5]


@pytest.mark.parametrize("values", [torch.zeros(3, 1), torch.zeros(2), [[1.0, 2.0, 3.0]], torch.zeros(())])
def test_check_rewards_rejects_wrong_shapes(values):
    with pytest.raises(ValueError, match=r"one score per image, shape \(3,\)"):
        check_rewards(values, 3, where="rbf, step 2")


def test_check_rewards_rejects_non_numbers():
    with pytest.raises(ValueError, match="not numbers"):
        check_rewards(["a", "b"], 2)
    with pytest.raises(ValueError, match="real numbers"):
        check_rewards(torch.tensor([True, False]), 2)


def test_nonfinite_policies():
    nan = torch.tensor([0.1, math.nan])
    with pytest.raises(ValueError, match="NaN for 1 of 2 images"):
        check_rewards(nan, 2)
    assert check_rewards(nan, 2, nonfinite="reject").tolist() == [pytest.approx(0.1), -math.inf]
    for policy in ("raise", "reject"):
        with pytest.raises(ValueError, match=r"\+inf"):
            check_rewards(torch.tensor([math.inf, 0.0]), 2, nonfinite=policy)
    assert check_rewards(torch.tensor([-math.inf, 0.0]), 2).tolist() == [-math.inf, 0.0]
    with pytest.raises(ValueError, match="nonfinite_rewards"):
        check_rewards([0.0], 1, nonfinite="ignore")


def _jpeg_kb(image: torch.Tensor, quality: int = 95) -> float:
    from PIL import Image

    buffer = io.BytesIO()
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


def test_jpeg_compressibility_prefers_simple_images():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 32, 32), 0.5)
    noisy = torch.rand(1, 3, 32, 32, generator=g)
    scores = JPEGCompressibility()(torch.cat([flat, noisy]), ["a", "b"])
    assert scores[0] > scores[1]
    assert float(scores[1]) == pytest.approx(-_jpeg_kb(noisy[0]))
    with pytest.raises(ValueError):
        JPEGCompressibility(quality=0)


def test_brightness_and_colour():
    images = torch.stack(
        [torch.zeros(3, 4, 4), torch.ones(3, 4, 4), torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 4, 4)]
    )
    assert BrightnessReward()(images, ["x"] * 3).tolist() == pytest.approx([0.0, 1.0, 0.299])
    assert BrightnessReward(target=0.299)(images, ["x"] * 3).tolist() == pytest.approx(
        [-0.299, -0.701, 0.0], abs=1e-6
    )
    red = ColorReward((1, 0, 0))(images, ["x"] * 3)
    assert red.tolist() == pytest.approx([-1.0, -2.0, 0.0])
    with pytest.raises(ValueError):
        ColorReward((2, 0, 0))
    with pytest.raises(ValueError):
        BrightnessReward(target=-1)


def test_reward_base_class_batches():
    calls = []

    class Sum(Reward):
        batch_size = 2

        def score(self, images, prompts):
            calls.append(len(images))
            return images.flatten(1).sum(1)

    out = Sum()(torch.arange(5.0).view(5, 1), ["p"] * 5)
    assert out.tolist() == [0, 1, 2, 3, 4] and calls == [2, 2, 1]
    with pytest.raises(ValueError, match="5 images but 4 prompts"):
        Sum()(torch.zeros(5, 1), ["p"] * 4)


def test_analytic_rewards():
    target = AnalyticTargetReward([1.0, -1.0], bandwidth=0.5)
    assert target(torch.tensor([[1.0, -1.0], [1.0, 0.0]]), ["", ""]).tolist() == pytest.approx(
        [1.0, math.exp(-1)]
    )
    from diffusers_ttsplugin.toy import default_mixture

    mix = default_mixture(2)
    mode = MixtureModeReward(mix, 3)
    scores = mode(mix.means.float(), [""] * 4)
    assert scores[3] > 0.99 and (scores[:3] < 0.01).all()
    assert MixtureModeReward(mix, 3, log=True)(mix.means.float(), [""] * 4)[3] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError):
        MixtureModeReward(mix, 4)


def test_reward_specs():
    assert isinstance(reward_from_spec("jpeg"), JPEGCompressibility)
    assert reward_from_spec("jpeg:80").quality == 80
    assert reward_from_spec("brightness:0.3").target == 0.3
    assert reward_from_spec("color:0,1,0").color == (0.0, 1.0, 0.0)
    assert reward_from_spec("diffusers_ttsplugin.rewards:BrightnessReward").target is None
    with pytest.raises(ValueError, match="unknown reward"):
        reward_from_spec("no_such_reward")
    with pytest.raises(ValueError, match="cannot import"):
        reward_from_spec("no_such_module_xyz:thing")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP built in code, saved with save_pretrained (model + tokenizer + image processor)."""
    from diffusers_ttsplugin.testing import save_tiny_clip

    path = tmp_path_factory.mktemp("tiny-clip")
    return path, save_tiny_clip(path, seed=0)


def test_clip_reward_from_a_local_folder(tiny_clip_dir):
    path, model = tiny_clip_dir
    reward = CLIPReward(path)
    assert reward.image_size == 30
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 40, generator=g)
    prompts = ["a red apple", "a blue car", "a red apple"]
    scores = reward(images, prompts)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and (scores.abs() <= 1).all()
    # Reference: CLIP's own forward on the same preprocessing gives the same cosine similarity.
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(path)
    pixels = torch.nn.functional.interpolate(images, size=(30, 30), mode="bicubic", antialias=True).clamp(
        0, 1
    )
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    tokens = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=(pixels - mean) / std,
        )
    expected = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert len(reward._text_cache) == 2
    assert torch.allclose(CLIPReward(path, scale=100.0)(images, prompts), 100 * expected, atol=1e-3)
    assert isinstance(reward_from_spec(f"clip:{path}"), CLIPReward)


def test_clip_reward_needs_a_local_folder(tmp_path):
    with pytest.raises(ValueError, match="local model folder"):
        CLIPReward(tmp_path / "missing")
