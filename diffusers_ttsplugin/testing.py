"""Tiny diffusers pipelines built in code (random weights, tokenizers made here: nothing is downloaded).

The component sizes follow the dummy components diffusers' own pipeline tests use; the tokenizers are a
byte-level CLIP BPE with no merges and a character-level T5 unigram vocabulary, which is all a random text
encoder needs. Building either pipeline takes a fraction of a second; 4 steps × 8 images at 32×32 run in well
under a second on a CPU.
"""

from __future__ import annotations

import string

import torch

_CLIP_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> list[str]:
    # GPT-2's reversible byte -> printable character table, which CLIP's BPE vocabulary is written in.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tiny_clip_tokenizer(model_max_length: int = 77):
    """A CLIP tokenizer over single bytes (no merges): ids < 520, fits a 1000-token CLIP text encoder."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for ch in _bytes_to_unicode():
        vocab.setdefault(ch, len(vocab))
    for ch in _bytes_to_unicode():
        vocab.setdefault(ch + "</w>", len(vocab))
    for tok in _CLIP_SPECIAL:
        vocab[tok] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def build_tiny_t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer over characters (unigram scores), with T5's 100 `<extra_id_*>` sentinels."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(ch, -3.0) for ch in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("▁" + w, -1.0) for w in ("a", "the", "of", "cat", "dog", "photo", "red", "blue", "apple")]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=model_max_length)


def _tiny_clip_encoder(seed: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _tiny_t5_encoder(seed: int, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=5,
        relative_attention_num_buckets=8,
        is_encoder_decoder=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config)


def _tiny_vae(seed: int, latent_channels: int, **kwargs):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        **kwargs,
    )


def _finish(pipe):
    # Modules built from a config start in training mode; T5's dropout would make every call random.
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_flux_pipeline(seed: int = 0):
    """A real `diffusers.FluxPipeline` with tiny random components (CLIP + T5 text encoders, 1+1 blocks).

    Args:
        seed: Seeds every component's weights; the same seed gives the same pipeline.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],
        )
        tokenizer_2 = build_tiny_t5_tokenizer()
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            text_encoder=_tiny_clip_encoder(seed, with_projection=False),
            text_encoder_2=_tiny_t5_encoder(seed, len(tokenizer_2)),
            tokenizer=build_tiny_clip_tokenizer(),
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            vae=_tiny_vae(
                seed,
                latent_channels=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            ),
        )
    return _finish(pipe)


def build_tiny_sd3_pipeline(seed: int = 0):
    """A real `diffusers.StableDiffusion3Pipeline` with tiny random components (2 CLIP + T5, one joint block).

    Args:
        seed: Seeds every component's weights; the same seed gives the same pipeline.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=64,
            out_channels=4,
        )
        tokenizer_3 = build_tiny_t5_tokenizer()
        pipe = StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            text_encoder=_tiny_clip_encoder(seed, with_projection=True),
            text_encoder_2=_tiny_clip_encoder(seed + 1, with_projection=True),
            text_encoder_3=_tiny_t5_encoder(seed, len(tokenizer_3)),
            tokenizer=build_tiny_clip_tokenizer(),
            tokenizer_2=build_tiny_clip_tokenizer(),
            tokenizer_3=tokenizer_3,
            transformer=transformer,
            vae=_tiny_vae(
                seed,
                latent_channels=4,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            ),
        )
    return _finish(pipe)


def save_tiny_clip(path, *, seed: int = 0, image_size: int = 30, projection_dim: int = 16):
    """Save a tiny random `transformers.CLIPModel` with its tokenizer and image processor to `path`.

    What `CLIPReward`, `PickScoreReward` and `AestheticReward` load from a folder: `save_pretrained` of the model,
    a byte-level CLIP tokenizer built in code and a `CLIPImageProcessor` (shortest side to `image_size`, centre
    crop). Returns the model (eval mode).
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = dict(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    vision = dict(
        image_size=image_size,
        patch_size=6,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    model.eval().save_pretrained(path)
    build_tiny_clip_tokenizer().save_pretrained(path)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(path)
    return model


def run_on_ranks(fn, world_size: int, *args, backend: str = "gloo", threads_per_rank: int = 1) -> None:
    """Run `fn(rank, world_size, *args)` in `world_size` fresh processes that form a default `torch.distributed`
    group (gloo over TCP on 127.0.0.1), as `torchrun` would on one machine. `fn` must be importable (a module-level
    function); results travel back through files. Raises if any rank fails."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(
        _rank_main,
        args=(world_size, port, backend, threads_per_rank, fn, args),
        nprocs=world_size,
        join=True,
    )


def _rank_main(rank, world_size, port, backend, threads, fn, args):
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
