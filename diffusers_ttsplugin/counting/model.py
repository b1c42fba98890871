"""The counting model's architecture: a diffusers `FluxPipeline` with tiny components sized for 32×32 images.

`CountingFluxPipeline` is `FluxPipeline` with two defaults changed and nothing else: the image size (32×32, the
size it was trained at, instead of FLUX's 1024) and `max_sequence_length` (12 text tokens, the length it was
trained with, instead of 512: the T5 prompt is padded to this length, and the model only knows that length).
Everything a FLUX pipeline takes (schedulers swapped with `from_config`, callbacks, `InferenceScaler`) works
unchanged.
"""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

from .prompts import KINDS, NUMBER_WORDS
from .render import IMAGE_SIZE

TEXT_TOKENS = 12  # T5 tokens per prompt (the longest prompt of the task is 8 with </s>)
CLIP_TOKENS = 48  # CLIP byte tokens (only the pooled embedding is used by FLUX)


class CountingFluxPipeline(FluxPipeline):
    """[`~diffusers.FluxPipeline`] whose defaults are the counting model's: 32×32 images, 12 T5 tokens."""

    # diffusers reads the components from this signature, so it lists FluxPipeline's own.
    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer,
        image_encoder=None,
        feature_extractor=None,
    ):
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.default_sample_size = IMAGE_SIZE // self.vae_scale_factor

    def __call__(self, *args, max_sequence_length: int = TEXT_TOKENS, **kwargs):
        return super().__call__(*args, max_sequence_length=max_sequence_length, **kwargs)


def task_words() -> list[str]:
    words = list(NUMBER_WORDS) + ["a", "an", "and"]
    for colour, shape, _ in KINDS:
        words += [colour, shape, shape + "s"]
    return list(dict.fromkeys(words))


def build_t5_tokenizer():
    """A T5 unigram tokenizer whose task words are single tokens (other text falls back to characters)."""
    import string

    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(ch, -3.0) for ch in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("▁" + w, -1.0) for w in task_words()]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=TEXT_TOKENS)


def build_components(seed: int = 0) -> dict:
    """Untrained components of the counting pipeline (the architecture the shipped weights belong to)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from ..testing import build_tiny_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t5_tokenizer = build_t5_tokenizer()
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=1000,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=2,
                num_hidden_layers=2,
                max_position_embeddings=CLIP_TOKENS,
                bos_token_id=0,
                eos_token_id=2,
                pad_token_id=1,
                projection_dim=32,
            )
        )
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                d_model=32,
                d_ff=64,
                d_kv=8,
                num_heads=4,
                num_layers=2,
                relative_attention_num_buckets=8,
                dropout_rate=0.0,
                is_encoder_decoder=False,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 32),
            layers_per_block=1,
            latent_channels=8,
            norm_num_groups=4,
            mid_block_add_attention=False,
            use_quant_conv=False,
            use_post_quant_conv=False,
            sample_size=IMAGE_SIZE,
            shift_factor=0.0,  # set from the latents by training
            scaling_factor=1.0,
        )
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=32,  # 8 latent channels × 2×2 packing
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=4,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=False,
            axes_dims_rope=[4, 6, 6],
        )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": clip,
        "text_encoder_2": t5,
        "tokenizer": build_tiny_clip_tokenizer(model_max_length=CLIP_TOKENS),
        "tokenizer_2": t5_tokenizer,
        "transformer": transformer,
        "vae": vae,
    }


def build_pipeline(seed: int = 0) -> CountingFluxPipeline:
    """An untrained `CountingFluxPipeline` (eval mode, progress bar off)."""
    pipe = CountingFluxPipeline(**build_components(seed))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
