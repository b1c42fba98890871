"""Adapters for published reward models: PickScore, HPSv2, ImageReward, the LAION aesthetic predictor, VQAScore.

Each adapter is a [`~diffusers_ttsplugin.rewards.Reward`] (images `[N, 3, H, W]` in [0, 1] and N prompts in, N
float64 scores out, batched by `batch_size`, under `torch.no_grad()`) that reproduces its model's own preprocessing
in torch on the batch (resize, crop or pad, mean/std) and its own score formula, each cited below. Their libraries
are optional extras, imported when an adapter is built; a missing one raises `ImportError` naming the extra:

| adapter              | library (extra)                              | weights (hub default; any local path works)    |
| -------------------- | -------------------------------------------- | ---------------------------------------------- |
| `PickScoreReward`    | transformers (`rewards-pickscore`)           | yuvalkirstain/PickScore_v1                     |
| `AestheticReward`    | transformers or open_clip (`rewards-aesthetic`) | openai/clip-vit-large-patch14 + MLP head       |
| `HPSv2Reward`        | open_clip (`rewards-hpsv2`)                  | xswu/HPSv2 (HPS_v2.1_compressed.pt)            |
| `ImageRewardReward`  | image-reward (`rewards-imagereward`)         | THUDM/ImageReward (ImageReward-v1.0)           |
| `VQAScoreReward`     | t2v_metrics (`rewards-vqascore`)             | clip-flant5-xxl (t2v_metrics downloads it)     |

Nothing is downloaded unless a hub id is given and a hub is reachable (`HF_HUB_OFFLINE=1` forbids it).
"""

from __future__ import annotations

import importlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .rewards import Reward, _to_uint8_hwc

# CLIP's (OpenAI's) pixel statistics: CLIP `_transform`, open_clip `OPENAI_DATASET_MEAN/STD`, ImageReward.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def require(module: str, extra: str, reward: str) -> Any:
    """Import an optional dependency, or raise `ImportError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except Exception as err:  # a broken install raises more than ImportError (torchvision: RuntimeError)
        state = "is not installed" if isinstance(err, ImportError) else "failed to import"
        raise ImportError(
            f"{reward} needs the `{module}` package, which {state} ({type(err).__name__}: {err}); "
            f"install it with `pip install 'ttsplugin[{extra}]'`"
        ) from err


@dataclass(frozen=True)
class ImageTransform:
    """A model's image preprocessing, in torch on a batch `[N, 3, H, W]` in [0, 1].

    Attributes:
        size (`int`): Side of the square the model sees.
        mean, std (`tuple[float, float, float]`): Per-channel normalisation after resizing.
        resize (`str`, defaults to "shortest"): "shortest" — shorter side to `size`, then a centre crop (CLIP's
            `Resize(size) + CenterCrop(size)`, `CLIPImageProcessor`); "longest" — longer side to `size`, then pad
            the rest with `fill` centred (HPSv2's `ResizeMaxSize`, open_clip's `resize_mode="longest"`);
            "squash" — straight to `size × size`.
        fill (`float`, defaults to 0.0): Padding value in [0, 1], before normalisation ("longest").
        clamp (`bool`, defaults to True): Clip the resized pixels to [0, 1], as resizing a uint8 PIL image does
            (CLIP, transformers, open_clip); HPSv2 resizes the float tensor and keeps bicubic's overshoot.

    Resizing is bicubic with antialiasing (`torch.nn.functional.interpolate(..., antialias=True)`, the kernel
    torchvision's tensor `Resize` uses, and PIL's bicubic to within uint8 rounding). Sizes follow torchvision:
    the short side becomes `size` and the long one `int(size * long / short)`; crops start at
    `round((H - size) / 2)`.
    """

    size: int
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    resize: str = "shortest"
    fill: float = 0.0
    clamp: bool = True

    def __post_init__(self):
        if self.resize not in ("shortest", "longest", "squash"):
            raise ValueError(f"`resize` must be 'shortest', 'longest' or 'squash', got {self.resize!r}")
        if int(self.size) < 1:
            raise ValueError(f"`size` must be >= 1, got {self.size}")

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize, before cropping or padding."""
        if self.resize == "squash":
            return self.size, self.size
        if self.resize == "shortest":
            short, long = min(height, width), max(height, width)
            new_long = int(self.size * long / short)
            return (self.size, new_long) if height <= width else (new_long, self.size)
        scale = self.size / max(height, width)
        return round(height * scale), round(width * scale)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        pixels = images.float()
        height, width = self.resized_shape(*pixels.shape[-2:])
        if (height, width) != tuple(pixels.shape[-2:]):
            pixels = torch.nn.functional.interpolate(
                pixels, size=(height, width), mode="bicubic", antialias=True, align_corners=False
            )
        if self.clamp:
            pixels = pixels.clamp(0, 1)
        if self.resize == "shortest":
            top, left = round((height - self.size) / 2), round((width - self.size) / 2)
            pixels = pixels[..., top : top + self.size, left : left + self.size]
        elif self.resize == "longest":
            pad_h, pad_w = self.size - height, self.size - width
            padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            pixels = torch.nn.functional.pad(pixels, padding, value=self.fill)
        mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std


def _unit(features: torch.Tensor) -> torch.Tensor:
    # float64 so that cosine similarities and heads on them are reproducible to the last digit that matters.
    return torch.nn.functional.normalize(features.double(), dim=-1)


class ClipTower:
    """A CLIP-style dual encoder behind one interface (transformers or open_clip), with cached text embeddings.

    Attributes:
        transform (`ImageTransform`): The model's preprocessing.
        logit_scale (`float`): `exp(logit_scale)` of the model (about 100 for trained CLIPs).
    """

    transform: ImageTransform
    logit_scale: float

    def __init__(self):
        self._text_cache: dict[str, torch.Tensor] = {}

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm float64 image embeddings `[N, D]` of images in [0, 1]."""
        pixels = self.transform(images.to(self.device))
        return _unit(self._encode_images(pixels.to(self.dtype)))

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm float64 text embeddings `[N, D]` (each distinct prompt is encoded once)."""
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            for prompt, feature in zip(missing, _unit(self._encode_texts(missing)), strict=True):
                self._text_cache[prompt] = feature
        return torch.stack([self._text_cache[p] for p in prompts])

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_texts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError


def _read_processor_config(source: str) -> dict:
    from transformers.utils import cached_file

    path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    return json.loads(Path(path).read_text()) if path else {}


def _transform_from_processor(config: dict, image_size: int) -> ImageTransform:
    """`CLIPImageProcessor` semantics: `size.shortest_edge` + `crop_size` → shortest/crop, `size.height` → squash."""
    size, crop = config.get("size"), config.get("crop_size")
    mean = tuple(config.get("image_mean", OPENAI_CLIP_MEAN))
    std = tuple(config.get("image_std", OPENAI_CLIP_STD))
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if size and "shortest_edge" in size and config.get("do_center_crop", True) and crop:
        if size["shortest_edge"] != crop["height"]:
            raise ValueError(
                f"resize to {size['shortest_edge']} then crop to {crop['height']} is not supported"
            )
        return ImageTransform(int(crop["height"]), mean, std, "shortest")
    if size and "height" in size:
        return ImageTransform(int(size["height"]), mean, std, "squash")
    return ImageTransform(image_size, mean, std, "shortest")


class TransformersClipTower(ClipTower):
    """A transformers CLIP-style model (`get_image_features` / `get_text_features`) from a folder or hub id.

    Args:
        model (`str`): Folder written by `save_pretrained`, or a hub id.
        processor (`str`, *optional*): Where the tokenizer and `preprocessor_config.json` live (default: `model`).
    """

    def __init__(
        self,
        model: str,
        processor: str | None = None,
        *,
        device=None,
        dtype=None,
        extra: str = "rewards",
        owner: str | None = None,
    ):
        super().__init__()
        owner = owner or type(self).__name__
        transformers = require("transformers", extra, owner)
        model = _model_source(model, owner)
        source = _model_source(processor, owner) if processor is not None else model
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or torch.float32
        try:
            self.model = transformers.AutoModel.from_pretrained(str(model), dtype=self.dtype)
        except OSError as err:
            raise OSError(f"{owner}: cannot load the model {model!r}: {err}") from err
        self.model.to(self.device).eval()
        for needed in ("get_image_features", "get_text_features", "logit_scale"):
            if not hasattr(self.model, needed):
                raise ValueError(f"the model at {model} has no `{needed}`: not a CLIP-style model")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        vision = getattr(self.model.config, "vision_config", None)
        self.transform = _transform_from_processor(
            _read_processor_config(source), int(getattr(vision, "image_size", 224))
        )
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        text = getattr(self.model.config, "text_config", None)
        limit = getattr(self.tokenizer, "model_max_length", None)
        positions = getattr(text, "max_position_embeddings", 77)
        self.max_length = positions if limit is None or limit > positions else limit

    @staticmethod
    def _pooled(output: Any) -> torch.Tensor:
        return output.pooler_output if hasattr(output, "pooler_output") else output

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._pooled(self.model.get_image_features(pixel_values=pixels))

    def _encode_texts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        return self._pooled(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        )


class OpenClipTower(ClipTower):
    """An open_clip model: a local folder (`open_clip_config.json` + weights), `hf-hub:org/repo`, or an
    architecture name with `pretrained` (a tag such as "openai", a checkpoint file, or None for random weights).

    Args:
        model (`str`): See above; `local-dir:PATH` works too.
        pretrained (`str`, *optional*): Only with an architecture name.
        transform (`ImageTransform`, *optional*): Override the model's own `preprocess_cfg`.
        extra (`str`, defaults to "rewards"), owner (`str`, *optional*): The extra and the reward that the
            missing-library error names.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        *,
        transform=None,
        device=None,
        dtype=None,
        extra: str = "rewards",
        owner: str | None = None,
    ):
        super().__init__()
        open_clip = require("open_clip", extra, owner or type(self).__name__)
        name = str(model)
        if Path(name).is_dir():
            name = f"local-dir:{name}"
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or torch.float32
        self.model = open_clip.create_model(name, pretrained=pretrained, device=self.device)
        self.model.to(self.dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        cfg = getattr(self.model.visual, "preprocess_cfg", {})
        size = cfg.get("size", 224)
        resize = cfg.get("resize_mode", "shortest")
        fill = cfg.get("fill_color", 0) / 255.0
        own = ImageTransform(
            int(size if isinstance(size, int) else size[0]),
            tuple(cfg.get("mean", OPENAI_CLIP_MEAN)),
            tuple(cfg.get("std", OPENAI_CLIP_STD)),
            resize,
            fill,
        )
        self.transform = transform or own
        self.logit_scale = float(self.model.logit_scale.detach().exp())

    def load_state_dict(self, checkpoint: str | Path) -> None:
        """Load a training checkpoint (`{"state_dict": ...}`, as HPSv2 ships) or a bare state dict, strictly."""
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.model.load_state_dict(state, strict=True)
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        self._text_cache.clear()

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_texts(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))


def _model_source(source: str | Path, what: str) -> str:
    """A local folder as is; a path that does not exist is an error here (not a bad hub id later)."""
    source = str(source)
    if Path(source).exists() or source.startswith(("hf-hub:", "local-dir:")):
        return source
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"{what}: {source!r} is neither a local folder nor an org/name hub id")
    return source


def load_clip_tower(
    source: str,
    *,
    pretrained: str | None = None,
    device=None,
    dtype=None,
    extra: str = "rewards",
    owner: str | None = None,
) -> ClipTower:
    """Pick the library for a CLIP source: open_clip for `hf-hub:` / `local-dir:` names, folders with
    `open_clip_config.json`, and architecture names without a slash ("ViT-L-14"); transformers for folders with
    `config.json` and `org/name` hub ids."""
    source = str(source)
    path = Path(source)
    open_clip_names = (
        source.startswith(("hf-hub:", "local-dir:")) or (path / "open_clip_config.json").is_file()
    )
    if open_clip_names or (not path.exists() and "/" not in source):
        return OpenClipTower(source, pretrained, device=device, dtype=dtype, extra=extra, owner=owner)
    if pretrained is not None:
        raise ValueError(
            f"`pretrained` is for open_clip architecture names; {source!r} is a transformers model"
        )
    return TransformersClipTower(source, device=device, dtype=dtype, extra=extra, owner=owner)


def _resolve_file(source: str | Path, filename: str, what: str) -> Path:
    """A file given directly, a folder holding `filename`, or `org/repo` on the hub (downloaded there)."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise FileNotFoundError(f"{what}: no {filename} in {path}")
    if str(source).count("/") != 1 or str(source).startswith(("/", ".")):
        raise FileNotFoundError(f"{what}: {str(source)!r} is neither a file, a folder nor an org/repo hub id")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(source), filename))
    except Exception as err:  # offline, unknown repo, no such file: all mean "give me a local copy"
        raise FileNotFoundError(
            f"{what}: cannot get {filename} from the hub repo {str(source)!r} ({type(err).__name__}: {err}); "
            "pass a local file or folder instead"
        ) from err


class PickScoreReward(Reward):
    """PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP-H fine-tuned on human preferences.

    Score = `exp(logit_scale) · cos(image, prompt)`, the model's learned scale (about 100): the formula of the
    PickScore README (`model.logit_scale.exp() * (text_embs @ image_embs.T)`), with the processor of
    `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (shortest side to 224, centre crop, OpenAI mean/std).

    Args:
        model (`str`, defaults to "yuvalkirstain/PickScore_v1"): A transformers CLIP folder or hub id.
        processor (`str`, *optional*): Folder or hub id of the tokenizer and `preprocessor_config.json`; default:
            `model` itself, except for PickScore's hub id, whose processor is `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`.
        device, dtype: Where and in which dtype the model runs (default CPU, float32).
        batch_size (`int`, defaults to 16): Images per forward pass.
    """

    HUB_MODEL = "yuvalkirstain/PickScore_v1"
    HUB_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def __init__(
        self, model: str = HUB_MODEL, processor: str | None = None, *, device=None, dtype=None, batch_size=16
    ):
        if processor is None:
            local = Path(model).is_dir()
            processor = model if local or model != self.HUB_MODEL else self.HUB_PROCESSOR
        self.model = str(model)
        self.batch_size = _positive(batch_size, "batch_size")
        self._tower = TransformersClipTower(
            self.model,
            processor,
            device=device,
            dtype=dtype,
            extra="rewards-pickscore",
            owner="PickScoreReward",
        )

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        similarity = (self._tower.image_features(images) * self._tower.text_features(prompts)).sum(-1)
        return (self._tower.logit_scale * similarity).cpu()


class HPSv2Reward(Reward):
    """Human Preference Score v2 (Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on HPD v2.

    Score = `cos(image, prompt)` (HPSv2's `hps_score = diag(image_features @ text_features.T)` on unit-norm
    features, a cosine in [-1, 1]; HPSv2 runs under CUDA autocast, we in `dtype`, float32 by default). Preprocessing is HPSv2's `preprocess_val`: longer side to 224 (bicubic),
    zero padding to a centred 224 × 224 square, OpenAI mean/std.

    Args:
        checkpoint (`str`, defaults to "xswu/HPSv2"): The HPS checkpoint: a `.pt` file, a folder holding
            `HPS_v2.1_compressed.pt` (or v2.0's), or a hub repo.
        version (`str`, defaults to "v2.1"): "v2.1" or "v2.0" (which file to take from a folder or the hub).
        arch (`str`, defaults to "ViT-H-14"): The open_clip architecture (built with random weights, then loaded).
        device, dtype, batch_size: As for [`PickScoreReward`].
    """

    FILES = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}

    def __init__(
        self,
        checkpoint: str = "xswu/HPSv2",
        *,
        version: str = "v2.1",
        arch: str = "ViT-H-14",
        device=None,
        dtype=None,
        batch_size=16,
    ):
        if version not in self.FILES:
            raise ValueError(f"`version` must be one of {sorted(self.FILES)}, got {version!r}")
        self.batch_size = _positive(batch_size, "batch_size")
        require("open_clip", "rewards-hpsv2", "HPSv2Reward")
        path = _resolve_file(checkpoint, self.FILES[version], "HPSv2Reward")
        self.checkpoint = str(path)
        self._tower = OpenClipTower(
            arch, None, device=device, dtype=dtype, extra="rewards-hpsv2", owner="HPSv2Reward"
        )
        self._tower.load_state_dict(path)
        size = self._tower.model.visual.image_size
        size = int(size if isinstance(size, int) else size[0])
        self._tower.transform = ImageTransform(
            size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "longest", 0.0, clamp=False
        )

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (self._tower.image_features(images) * self._tower.text_features(prompts)).sum(-1).cpu()


class AestheticHead(torch.nn.Module):
    """The LAION improved aesthetic predictor's head (christophschuhmann/improved-aesthetic-predictor, the MLP of
    `simple_inspect_prediction.py`): 768 → 1024 → 128 → 64 → 16 → 1, linear layers with dropout and no activation,
    on the unit-norm CLIP ViT-L/14 image embedding; outputs about 1-10 (AVA's rating scale)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


class AestheticReward(Reward):
    """The LAION aesthetic predictor: `head(unit-norm CLIP ViT-L/14 image embedding)`; the prompt is ignored.

    The CLIP is OpenAI's ViT-L/14 either through transformers (`openai/clip-vit-large-patch14`, as DDPO's and
    TRL's aesthetic scorers load it) or through open_clip (`clip="ViT-L-14", pretrained="openai"`, the same weights
    as the LAION code's `clip.load("ViT-L/14")`). Preprocessing: shortest side to 224, centre crop, OpenAI
    mean/std. The head is [`AestheticHead`] (`sac+logos+ava1-l14-linearMSE.pth`, on the hub as
    `trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth`).

    Args:
        head (`str`, defaults to "trl-lib/ddpo-aesthetic-predictor"): A head file (`.pth` state dict with
            `layers.*` keys), a folder holding `aesthetic-model.pth`, or a hub repo.
        clip (`str`, *optional*): The CLIP (see [`load_clip_tower`]); default: `head` itself when it is a folder
            holding a CLIP (`config.json` or `open_clip_config.json`), else `openai/clip-vit-large-patch14`.
        pretrained (`str`, *optional*): open_clip weights tag or file, with an architecture name as `clip`.
        device, dtype, batch_size: As for [`PickScoreReward`].
    """

    HEAD_FILE = "aesthetic-model.pth"

    def __init__(
        self,
        head: str = "trl-lib/ddpo-aesthetic-predictor",
        *,
        clip: str | None = None,
        pretrained: str | None = None,
        device=None,
        dtype=None,
        batch_size=16,
    ):
        self.batch_size = _positive(batch_size, "batch_size")
        folder = Path(head)
        if clip is None:
            has_clip = folder.is_dir() and any(
                (folder / f).is_file() for f in ("config.json", "open_clip_config.json")
            )
            clip = str(folder) if has_clip else "openai/clip-vit-large-patch14"
        self.head_path = str(_resolve_file(head, self.HEAD_FILE, "AestheticReward"))
        self._tower = load_clip_tower(
            clip,
            pretrained=pretrained,
            device=device,
            dtype=dtype,
            extra="rewards-aesthetic",
            owner="AestheticReward",
        )
        state = torch.load(self.head_path, map_location="cpu", weights_only=True)
        dim = state["layers.0.weight"].shape[1] if "layers.0.weight" in state else 768
        self._head = AestheticHead(dim)
        self._head.load_state_dict(state, strict=True)
        self._head.to(self._tower.device, torch.float64).eval()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self._head(self._tower.image_features(images)).squeeze(-1).cpu()


class ImageRewardReward(Reward):
    """ImageReward (Xu et al. 2023): BLIP (ViT-L + a BERT cross-attending to the image) with an MLP head.

    Runs the library's own batched scorer, `ImageReward.score_gard(ids, mask, pixels)`: the `[CLS]` feature of the
    text encoder → MLP → `(r - 0.16717) / 1.03334` (the library's mean/std). Prompts are tokenized by the model's
    BERT tokenizer to 35 tokens (padding to max length, truncation), as `ImageReward.score` does; images get
    `ImageReward._transform(224)`: shortest side to 224, centre crop, OpenAI mean/std.

    Args:
        checkpoint (`str`, defaults to "ImageReward-v1.0"): `ImageReward.pt`, a folder holding it (and
            `med_config.json`), or the library's model name (downloaded from the hub by the library).
        med_config (`str`, *optional*): The BLIP text encoder's config file (default: next to the checkpoint, else
            the library downloads it).
        device, batch_size: As for [`PickScoreReward`]. The library builds its BERT tokenizer with
            `BertTokenizer.from_pretrained("bert-base-uncased")`: it must be in the Hugging Face cache offline.
    """

    def __init__(
        self,
        checkpoint: str = "ImageReward-v1.0",
        *,
        med_config: str | None = None,
        device=None,
        batch_size=16,
    ):
        library = require("ImageReward", "rewards-imagereward", "ImageRewardReward")
        self.batch_size = _positive(batch_size, "batch_size")
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "ImageReward.pt"
            if not path.is_file():
                raise FileNotFoundError(f"ImageRewardReward: no ImageReward.pt in {checkpoint}")
        if med_config is None and path.is_file() and (path.parent / "med_config.json").is_file():
            med_config = str(path.parent / "med_config.json")
        self._device = torch.device(device or "cpu")
        name = str(path) if path.is_file() else str(checkpoint)
        self._model = library.load(name, device=self._device, med_config=med_config).eval()
        self._transform = ImageTransform(224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "shortest")

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tokens = self._model.blip.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
        ).to(self._device)
        pixels = self._transform(images.to(self._device))
        rewards = self._model.score_gard(tokens.input_ids, tokens.attention_mask, pixels)
        return rewards.reshape(-1).double().cpu()


class VQAScoreReward(Reward):
    """VQAScore (Lin et al. 2024): P("Yes" | image, "Does this figure show '{prompt}'? ...") from a VQA model.

    Runs t2v_metrics' own scorer (`t2v_metrics.VQAScore(model)`), one score per (image, prompt) pair through its
    paired `model.forward(paths, texts)`; images are written as PNG files to a temporary folder first, because
    t2v_metrics reads images from paths. Scores are probabilities in [0, 1].

    Args:
        model (`str`, defaults to "clip-flant5-xxl"): A t2v_metrics VQAScore model name.
        cache_dir (`str`, *optional*): Where t2v_metrics looks for (and downloads) the weights.
        device, batch_size: As for [`PickScoreReward`].
        **score_kwargs: Passed to the scorer (e.g. `question_template`, `answer_template`).
    """

    def __init__(
        self, model: str = "clip-flant5-xxl", *, cache_dir=None, device=None, batch_size=8, **score_kwargs
    ):
        t2v_metrics = require("t2v_metrics", "rewards-vqascore", "VQAScoreReward")
        self.model = str(model)
        self.batch_size = _positive(batch_size, "batch_size")
        kwargs = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
        self._scorer = t2v_metrics.VQAScore(
            model=self.model, device=str(torch.device(device or "cpu")), **kwargs
        )
        self._score_kwargs = score_kwargs

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="vqascore-") as folder:
            paths = []
            for i, array in enumerate(_to_uint8_hwc(images)):
                paths.append(str(Path(folder) / f"{i}.png"))
                Image.fromarray(array).save(paths[-1])
            scores = self._scorer.model.forward(paths, prompts, **self._score_kwargs)
        return torch.as_tensor(scores).reshape(-1).double().cpu()


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
    return int(value)


__all__ = [
    "AestheticHead",
    "AestheticReward",
    "ClipTower",
    "HPSv2Reward",
    "ImageRewardReward",
    "ImageTransform",
    "OpenClipTower",
    "PickScoreReward",
    "TransformersClipTower",
    "VQAScoreReward",
    "load_clip_tower",
    "require",
]
