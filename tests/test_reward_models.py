"""Reward-model adapters (diffusers_ttsplugin.reward_models) on tiny random-weight models built in code.

PickScore and the aesthetic predictor (transformers backend) run here for real, checked against references written
in this file from the published formulas and fed by transformers' own `CLIPImageProcessor`. The open_clip tests
(HPSv2, the aesthetic predictor through open_clip) need `open_clip`, which needs a torchvision built for this torch;
they skip where it does not import (the project's CPU venv) and were run in a scratch venv (README, "Reward
models"). ImageReward and VQAScore: the missing-extra errors are tested (their libraries pin old transformers/torch).
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from diffusers_ttsplugin.reward_models import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    AestheticHead,
    AestheticReward,
    HPSv2Reward,
    ImageRewardReward,
    ImageTransform,
    PickScoreReward,
    VQAScoreReward,
    require,
)
from diffusers_ttsplugin.rewards import check_rewards
from diffusers_ttsplugin.testing import build_tiny_clip_tokenizer, save_tiny_clip


def _open_clip_or_skip():
    try:
        import open_clip
    except Exception as err:  # torchvision built for another torch raises RuntimeError, not ImportError
        pytest.skip(f"open_clip does not import here: {type(err).__name__}: {err}")
    return open_clip


def _images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    # uint8-exact values, so PIL-based references see exactly the pixels the adapters see.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=g).float() / 255


def _pil(images: torch.Tensor):
    from PIL import Image

    arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


PROMPTS = ["a red apple", "a blue car", "a red apple", "two cats"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-clip")
    return path, save_tiny_clip(path, seed=0)


# --- preprocessing -------------------------------------------------------------------------------------------


def test_transform_matches_clip_image_processor(tiny_clip):
    # transformers' CLIPImageProcessor (PIL bicubic on uint8, shortest edge, centre crop, mean/std) is the reference
    # of PickScore's and the aesthetic predictor's preprocessing; ours is torch's antialiased bicubic on floats.
    # PIL rounds and clips to uint8 between its horizontal and vertical passes, so on pixel noise (bicubic
    # overshoot everywhere) single pixels differ by up to ~15/255; on smooth images by about 1/255 (its uint8
    # output alone is off by 0.25/255 on average).
    from transformers import AutoImageProcessor

    path, _ = tiny_clip
    processor = AutoImageProcessor.from_pretrained(path)
    ours = ImageTransform(30)
    unit = 1 / 255 / min(OPENAI_CLIP_STD)  # one uint8 step after normalisation
    for height, width in [(48, 40), (40, 64), (30, 30), (20, 26), (224, 160)]:
        noise = _images(2, height, width, seed=height + width)
        smooth = torch.nn.functional.interpolate(
            _images(2, 5, 5, seed=width), size=(height, width), mode="bilinear"
        )
        smooth = (smooth * 255).round() / 255
        for images, worst, mean in ((noise, 16 * unit, 0.5 * unit), (smooth, 1.5 * unit, 0.4 * unit)):
            expected = processor(images=_pil(images), return_tensors="pt")["pixel_values"]
            got = ours(images)
            assert got.shape == expected.shape == (2, 3, 30, 30)
            error = (got - expected).abs()
            assert error.max() < worst and error.mean() < mean, (
                height,
                width,
                error.max() / unit,
                error.mean() / unit,
            )


def test_transform_geometry():
    # A white square in the middle of a black landscape image: "shortest" crops the sides away, "longest" pads top
    # and bottom, "squash" keeps both.
    image = torch.zeros(1, 3, 40, 80)
    image[..., 10:30, 30:50] = 1.0
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    assert ImageTransform(20, mean, std, "shortest").resized_shape(40, 80) == (20, 40)
    crop = ImageTransform(20, mean, std, "shortest")(image)
    assert crop.shape == (1, 3, 20, 20) and crop[0, 0, 10, 10] > 0.99 and crop[0, 0, 0, 0] < 0.01
    pad = ImageTransform(20, mean, std, "longest", fill=0.5)(image)
    assert pad.shape == (1, 3, 20, 20)
    assert torch.all(pad[..., :5, :] == 0.5) and torch.all(pad[..., 15:, :] == 0.5)
    assert ImageTransform(20, mean, std, "longest").resized_shape(40, 80) == (10, 20)
    assert ImageTransform(20, mean, std, "squash")(image).shape == (1, 3, 20, 20)
    normalised = ImageTransform(4)(torch.ones(1, 3, 4, 4))
    expected = (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    assert torch.allclose(normalised[0, :, 0, 0], expected)


def test_transform_rejects_garbage():
    with pytest.raises(ValueError, match="`resize`"):
        ImageTransform(10, resize="crop")
    with pytest.raises(ValueError, match="`size`"):
        ImageTransform(0)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        ImageTransform(10)(torch.zeros(3, 10, 10))


# --- PickScore (transformers) --------------------------------------------------------------------------------


def _clip_reference(model, path, images, prompts):
    """The PickScore README's formula, fed by transformers' own processor: exp(logit_scale) · cos per pair."""
    from transformers import AutoImageProcessor

    tokens = build_tiny_clip_tokenizer()(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    pixels = AutoImageProcessor.from_pretrained(path)(images=_pil(images), return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        out = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        )
    return out.logits_per_image.diagonal().double(), out.image_embeds.double()


def test_pickscore_from_a_local_folder(tiny_clip):
    path, model = tiny_clip
    reward = PickScoreReward(str(path), batch_size=3)
    images = _images(4, 48, 40)
    scores = reward(images, PROMPTS)
    assert scores.dtype == torch.float64 and scores.shape == (4,)
    check_rewards(scores, 4)
    expected, _ = _clip_reference(model, path, images, PROMPTS)
    # The learned scale: exp(2.6592) = 14.29 at init (about 100 in the trained PickScore).
    assert reward._tower.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    assert torch.allclose(scores, expected, atol=0.02 * reward._tower.logit_scale / 14.29), (scores, expected)
    # Exactly the formula on our own preprocessing: cos · scale, text encoded once per distinct prompt.
    with torch.no_grad():
        image = model.get_image_features(pixel_values=ImageTransform(30)(images)).pooler_output.double()
        tokens = build_tiny_clip_tokenizer()(
            PROMPTS, padding="max_length", max_length=77, return_tensors="pt"
        )
        text = model.get_text_features(**tokens).pooler_output.double()
    exact = reward._tower.logit_scale * torch.nn.functional.cosine_similarity(image, text)
    assert torch.allclose(scores, exact, atol=1e-9)
    assert len(reward._tower._text_cache) == 3
    # Batching changes nothing.
    assert torch.allclose(PickScoreReward(str(path), batch_size=1)(images, PROMPTS), scores, atol=1e-9)


def test_pickscore_ranks_the_matching_prompt(tiny_clip):
    # Scores are per (image, prompt) pair: the same image scored against two prompts differs.
    path, _ = tiny_clip
    reward = PickScoreReward(str(path))
    image = _images(1, 30, 30).expand(2, -1, -1, -1)
    scores = reward(image, ["a red apple", "a blue car"])
    assert scores[0] != scores[1]


def test_model_sources_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local folder nor an org/name hub id"):
        PickScoreReward(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="`batch_size`"):
        PickScoreReward(str(tmp_path), batch_size=0)
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor an org/repo hub id"):
        AestheticReward(str(tmp_path / "head.pth"))
    with pytest.raises(FileNotFoundError, match="no aesthetic-model.pth"):
        AestheticReward(str(tmp_path))


# --- LAION aesthetic predictor -------------------------------------------------------------------------------


def _save_head(path, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = AestheticHead(dim)
    state = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in head.state_dict().items()}
    torch.save(state, path)
    return state


def _aesthetic_reference(state: dict, embeds: torch.Tensor) -> torch.Tensor:
    """simple_inspect_prediction.py: numpy l2 normalisation, then five linear layers (no activation)."""
    x = embeds.numpy()
    norm = np.linalg.norm(x, 2, axis=-1, keepdims=True)
    norm[norm == 0] = 1
    x = torch.from_numpy(x / norm)
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].double().T + state[f"layers.{i}.bias"].double()
    return x.squeeze(-1)


def test_aesthetic_predictor_with_transformers_clip(tiny_clip, tmp_path):
    import shutil

    path, model = tiny_clip
    folder = tmp_path / "aesthetic"
    shutil.copytree(path, folder)
    state = _save_head(folder / "aesthetic-model.pth", dim=16)
    reward = AestheticReward(str(folder))  # head and CLIP from one folder
    images = _images(3, 40, 64)
    scores = reward(images, ["ignored"] * 3)
    assert scores.dtype == torch.float64 and scores.shape == (3,)
    _, embeds = _clip_reference(model, path, images, ["x"] * 3)
    expected = _aesthetic_reference(state, embeds)
    assert torch.allclose(scores, expected, rtol=0.02, atol=0.02 * expected.abs().max()), (scores, expected)
    # The head file and the CLIP can come from different places; the prompt does not matter.
    other = AestheticReward(str(folder / "aesthetic-model.pth"), clip=str(path))
    assert torch.allclose(other(images, ["a", "b", "c"]), scores, atol=1e-9)
    with pytest.raises(ValueError, match="`pretrained` is for open_clip"):
        AestheticReward(str(folder), clip=str(path), pretrained="openai")


def test_aesthetic_head_must_match(tiny_clip, tmp_path):
    path, _ = tiny_clip
    torch.save({"layers.0.weight": torch.zeros(1024, 16)}, tmp_path / "aesthetic-model.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        AestheticReward(str(tmp_path), clip=str(path))


# --- open_clip: HPSv2 and the aesthetic predictor --------------------------------------------------------------

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 30, "layers": 2, "width": 32, "head_width": 16, "patch_size": 6},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A tiny random open_clip CLIP registered as architecture 'ttsplugin-tiny' and saved as a local-dir folder."""
    import json

    open_clip = _open_clip_or_skip()
    configs = tmp_path_factory.mktemp("open-clip-configs")
    (configs / "ttsplugin-tiny.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(configs)
    torch.manual_seed(0)
    model = open_clip.create_model("ttsplugin-tiny", pretrained=None).eval()
    folder = tmp_path_factory.mktemp("open-clip-tiny")
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {}})
    )
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return open_clip, model, folder


def test_hpsv2_matches_its_published_scorer(tiny_open_clip, tmp_path):
    # HPSv2's img_score.score: preprocess_val = ToTensor, ResizeMaxSize(224) (longest side, zero pad), Normalize;
    # hps = diag(image_features @ text_features.T) of the model's normalised outputs. Written here with torchvision.
    import torchvision.transforms.functional as TF

    open_clip, model, _ = tiny_open_clip
    torch.save({"state_dict": model.state_dict()}, tmp_path / "HPS_v2.1_compressed.pt")
    reward = HPSv2Reward(str(tmp_path), arch="ttsplugin-tiny")
    images = _images(4, 40, 64)
    scores = reward(images, PROMPTS)
    assert scores.dtype == torch.float64 and scores.shape == (4,)

    def preprocess_val(image):  # hpsv2/src/open_clip/transform.py, ResizeMaxSize with is_train=False
        height, width = image.shape[1:]
        scale = 30 / max(height, width)
        size = tuple(round(d * scale) for d in (height, width))
        image = TF.resize(image, size, TF.InterpolationMode.BICUBIC)
        pad_h, pad_w = 30 - size[0], 30 - size[1]
        image = TF.pad(image, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        return TF.normalize(image, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    tokenizer = open_clip.get_tokenizer("ttsplugin-tiny")
    with torch.no_grad():
        pixels = torch.stack([preprocess_val(image) for image in images])
        outputs = model(pixels, tokenizer(PROMPTS))
        image_features, text_features = outputs[0], outputs[1]
        expected = (image_features @ text_features.T).diagonal().double()
    assert torch.allclose(scores, expected, atol=1e-5), (scores, expected)
    # v2.0's file name, a checkpoint given directly, and a missing one.
    (tmp_path / "HPS_v2.1_compressed.pt").rename(tmp_path / "HPS_v2_compressed.pt")
    assert torch.allclose(
        HPSv2Reward(str(tmp_path), version="v2.0", arch="ttsplugin-tiny")(images, PROMPTS), scores, atol=1e-9
    )
    with pytest.raises(FileNotFoundError, match="no HPS_v2.1_compressed.pt"):
        HPSv2Reward(str(tmp_path), arch="ttsplugin-tiny")
    with pytest.raises(ValueError, match="`version`"):
        HPSv2Reward(str(tmp_path), version="v3")


def test_aesthetic_predictor_with_open_clip(tiny_open_clip, tmp_path):
    # The LAION code: clip.load's preprocess (Resize(224, bicubic), CenterCrop, Normalize) → encode_image → l2 →
    # MLP. open_clip's own transform (PIL) is the reference preprocessing here.
    open_clip, model, folder = tiny_open_clip
    state = _save_head(tmp_path / "head.pth", dim=16, seed=1)
    reward = AestheticReward(str(tmp_path / "head.pth"), clip=str(folder))
    images = _images(3, 48, 40)
    preprocess = open_clip.image_transform(30, is_train=False)
    with torch.no_grad():
        embeds = model.encode_image(torch.stack([preprocess(im) for im in _pil(images)])).double()
    expected = _aesthetic_reference(state, embeds)
    scores = reward(images, [""] * 3)
    assert torch.allclose(scores, expected, rtol=0.02, atol=0.02 * expected.abs().max()), (scores, expected)
    by_arch = AestheticReward(
        str(tmp_path / "head.pth"),
        clip="ttsplugin-tiny",
        pretrained=str(folder / "open_clip_pytorch_model.bin"),
    )
    assert torch.allclose(by_arch(images, [""] * 3), scores, atol=1e-9)


# --- ImageReward (the image-reward library) ---------------------------------------------------------------------

MED_CONFIG = {  # BLIP's med_config.json, shrunk: the MLP head fixes hidden_size = 768; one layer, a tiny FFN
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 1,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 1024,
    "add_cross_attention": True,
}


def _bert_tokenizer(folder):
    """A BERT WordPiece tokenizer over characters and a few words, in place of the hub's bert-base-uncased."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789"]
    words += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + ["red", "apple", "blue", "car", "two", "cats"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # what ImageReward's init_tokenizer adds
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    return tokenizer


def test_imagereward_matches_the_library(tmp_path, monkeypatch):
    # The library's model is BLIP with a ViT-L fixed in its code (300M parameters at random init) and a tokenizer
    # it downloads; we shrink the text encoder through med_config, build the tokenizer here, and compare with the
    # library's own `inference_rank` (PIL preprocessing, one image at a time).
    try:
        import ImageReward as library
        from ImageReward.models.BLIP import blip_pretrain
    except Exception as err:
        pytest.skip(f"ImageReward does not import here: {type(err).__name__}: {err}")
    import json

    monkeypatch.setattr(blip_pretrain, "init_tokenizer", lambda: _bert_tokenizer(tmp_path))
    (tmp_path / "med_config.json").write_text(json.dumps(MED_CONFIG))
    torch.manual_seed(0)
    model = library.ImageReward(med_config=str(tmp_path / "med_config.json"), device="cpu").eval()
    for parameter in model.mlp.parameters():  # the library's init gives every image nearly the same score
        parameter.data.normal_(0, 0.2)
    torch.save(model.state_dict(), tmp_path / "ImageReward.pt")

    reward = ImageRewardReward(str(tmp_path), batch_size=2)
    images = _images(3, 256, 240)
    prompt = "two red apples"
    scores = reward(images, [prompt] * 3)
    assert scores.dtype == torch.float64 and scores.shape == (3,)
    with torch.no_grad():
        _, expected = model.inference_rank(prompt, _pil(images))
    expected = torch.tensor(expected, dtype=torch.float64)
    spread = float(expected.max() - expected.min())
    assert spread > 0.01
    assert torch.allclose(scores, expected, atol=0.05 * spread), (scores, expected)
    assert torch.allclose(
        ImageRewardReward(str(tmp_path), batch_size=3)(images, [prompt] * 3), scores, atol=1e-6
    )


# --- missing extras ------------------------------------------------------------------------------------------


def _missing(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return True
    return False


@pytest.mark.parametrize(
    ("build", "module", "extra"),
    [
        (lambda: HPSv2Reward("/nonexistent/HPS.pt"), "open_clip", "rewards-hpsv2"),
        (
            lambda: AestheticReward(__file__, clip="ViT-L-14", pretrained="openai"),
            "open_clip",
            "rewards-aesthetic",
        ),
        (lambda: ImageRewardReward("/nonexistent"), "ImageReward", "rewards-imagereward"),
        (lambda: VQAScoreReward(), "t2v_metrics", "rewards-vqascore"),
    ],
    ids=["hpsv2", "aesthetic-open_clip", "imagereward", "vqascore"],
)
def test_missing_library_names_the_extra(build, module, extra):
    if not _missing(module):
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ImportError, match=rf"`{module}`.*pip install 'ttsplugin\[{extra}\]'"):
        build()


def test_missing_transformers_names_the_extra(monkeypatch, tiny_clip):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an absent package looks like to `import`
    with pytest.raises(
        ImportError,
        match=r"PickScoreReward needs the `transformers` package, which is not installed.*ttsplugin\[rewards-pickscore\]",
    ):
        PickScoreReward(str(tiny_clip[0]))


def test_a_broken_library_is_reported_as_such(tmp_path, monkeypatch):
    (tmp_path / "broken_reward_lib.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="failed to import.*torchvision::nms.*ttsplugin\\[rewards\\]"):
        require("broken_reward_lib", "rewards", "SomeReward")


def test_every_extra_named_by_an_adapter_exists_and_installs_its_library():
    from importlib import metadata

    dist = metadata.distribution("ttsplugin")
    requirements = dist.requires or []
    wanted = {
        "rewards-pickscore": "transformers",
        "rewards-aesthetic": "open_clip_torch",
        "rewards-hpsv2": "open_clip_torch",
        "rewards-imagereward": "image-reward",
        "rewards-vqascore": "t2v-metrics",
        "rewards": "open_clip_torch",
    }
    for extra, package in wanted.items():
        assert any(r.startswith(package) and f'extra == "{extra}"' in r for r in requirements), (
            extra,
            requirements,
        )
    assert importlib.util.find_spec("diffusers_ttsplugin.reward_models") is not None
