"""The tiny FLUX and SD3 pipelines are real diffusers pipelines that produce images here."""

from __future__ import annotations

import pytest
import torch

from diffusers_ttsplugin.testing import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

BUILDERS = {"flux": build_tiny_flux_pipeline, "sd3": build_tiny_sd3_pipeline}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pipe(request):
    return BUILDERS[request.param]()


def _run(pipe, seed: int, n: int = 2):
    return pipe(
        "a photo of a red apple",
        num_inference_steps=3,
        height=32,
        width=32,
        num_images_per_prompt=n,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        max_sequence_length=32,
    ).images


def test_pipeline_produces_images(pipe):
    images = _run(pipe, seed=0)
    assert images.shape == (2, 3, 32, 32)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0


def test_pipeline_is_seeded(pipe):
    assert torch.equal(_run(pipe, seed=1), _run(pipe, seed=1))
    assert not torch.equal(_run(pipe, seed=1), _run(pipe, seed=2))


def test_builders_are_deterministic():
    for build in BUILDERS.values():
        a, b = build(seed=5), build(seed=5)
        for (name, pa), (_, pb) in zip(
            a.transformer.named_parameters(), b.transformer.named_parameters(), strict=True
        ):
            assert torch.equal(pa, pb), name
