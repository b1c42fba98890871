"""Training of the counting model: a VAE on the rendered images, then flow matching of transformer + text encoders.

One seed determines everything (data, initial weights, batches, noise). `python -m ttsplugin train-flow --out DIR`
runs it; the shipped weights came from that command (see the model card next to them).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .prompts import format_prompt, sample_counts
from .render import render_batch


@dataclass
class TrainConfig:
    """Everything the training run depends on (recorded in the model card)."""

    seed: int = 0
    num_images: int = 40_000  # rendered once; the flow stage samples batches from them
    vae_steps: int = 400
    vae_batch: int = 32
    vae_lr: float = 3e-3
    flow_steps: int = 1600
    flow_batch: int = 96
    flow_lr: float = 1.5e-3
    warmup: int = 100
    ema_decay: float = 0.998
    eval_every: int = 250  # log the EMA model's counting accuracy on 48 test prompts (10 Euler steps)
    matching_steps: int = 1500
    matching_batch: int = 64
    matching_images: int = 30_000
    threads: int = 1  # on a shared CPU one thread per process is fastest (no OpenMP spinning)


def _log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def make_dataset(num: int, seed: int) -> tuple[torch.Tensor, list[dict[str, int]]]:
    """`num` rendered training images `[num, 3, 32, 32]` in [0, 1] and their configurations (train split)."""
    rng = np.random.default_rng([seed, 0, 7])
    configs = [sample_counts(rng) for _ in range(num)]
    return torch.from_numpy(render_batch(configs, seed)).float(), configs


def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, start: float) -> None:
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _cosine(step, cfg.vae_steps, 50)
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)
        x = images[idx] * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            _log(f"vae step {step}: mse {F.mse_loss(rec, x).item():.5f}", start)
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat(
        [vae.encode(images[i : i + batch] * 2 - 1).latent_dist.mean for i in range(0, len(images), batch)]
    )


def train_flow(pipe, latents: torch.Tensor, prompts: list[str], cfg: TrainConfig, start: float) -> dict:
    """Flow matching on packed latents x0: x_t = (1 − t) x0 + t ε, target ε − x0 (FLUX's velocity)."""
    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in modules for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.flow_lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    n, c, h, w = latents.shape
    img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    for m in modules:
        m.train()
    losses = []
    for step in range(cfg.flow_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.flow_lr * _cosine(step, cfg.flow_steps, cfg.warmup)
        idx = torch.randint(0, n, (cfg.flow_batch,), generator=gen)
        x0 = pipe._pack_latents(latents[idx], cfg.flow_batch, c, h, w)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.rand(cfg.flow_batch, generator=gen)
        xt = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * noise
        embeds, pooled, text_ids = pipe.encode_prompt(
            [prompts[i] for i in idx.tolist()], None, max_sequence_length=pipe_text_tokens()
        )
        pred = pipe.transformer(
            hidden_states=xt,
            timestep=t,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params, strict=True):
                e.lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.flow_steps - 1:
            _log(f"flow step {step}: loss {np.mean(losses[-100:]):.4f}", start)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            with torch.no_grad():
                live = [p.detach().clone() for p in params]
                for e, p in zip(ema, params, strict=True):
                    p.copy_(e)
                metrics = evaluate(pipe, num_prompts=48, num_steps=10)
                for v, p in zip(live, params, strict=True):
                    p.copy_(v)
            for m in modules:
                m.train()
            _log(
                f"flow step {step}: EMA model accuracy {metrics['accuracy']:.3f}, RSS {metrics['rss']:.3f}",
                start,
            )
    with torch.no_grad():
        for e, p in zip(ema, params, strict=True):
            p.copy_(e)
    for m in modules:
        m.eval()
    return {"final_loss": float(np.mean(losses[-100:]))}


@torch.no_grad()
def evaluate(pipe, num_prompts: int = 64, num_steps: int = 10, seed: int = 0) -> dict:
    """Counting metrics of plain sampling (the pipeline's scheduler) on `make_prompts(num_prompts, seed=seed)`."""
    from .counter import count_objects
    from .metrics import counting_metrics
    from .prompts import make_prompts

    for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        m.eval()
    prompts = make_prompts(num_prompts, seed=seed)
    images = pipe(
        [p.prompt for p in prompts],
        num_inference_steps=num_steps,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    ).images
    return counting_metrics(count_objects(images), [p.counts for p in prompts])


def pipe_text_tokens() -> int:
    from .model import TEXT_TOKENS

    return TEXT_TOKENS


def train(out: str | Path, cfg: TrainConfig | None = None) -> dict:
    """Train the counting model and write it to `out`: `pipeline/` (`save_pretrained`), `matching.safetensors`
    (the matching score) and `training.json` (configuration, times, metrics)."""
    from .model import build_pipeline

    cfg = cfg or TrainConfig()
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    out = Path(out)
    images, configs = make_dataset(cfg.num_images, cfg.seed)
    rng = np.random.default_rng([cfg.seed, 0, 8])
    prompts = [format_prompt(dict(sorted(c.items(), key=lambda _: rng.random()))) for c in configs]
    _log(f"rendered {len(images)} images", start)
    pipe = build_pipeline(cfg.seed)
    train_vae(pipe.vae, images, cfg, start)
    raw = encode_latents(pipe.vae, images)
    shift, scale = float(raw.mean()), float(1 / raw.std())
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    with torch.no_grad():
        recon = (pipe.vae.decode(raw[:512]).sample / 2 + 0.5).clamp(0, 1)
    from .counter import count_objects
    from .metrics import counting_metrics

    vae_metrics = counting_metrics(count_objects(recon), configs[:512])
    _log(f"VAE reconstructions: counting accuracy {vae_metrics['accuracy']:.3f} (n=512)", start)
    latents = (raw - shift) * scale
    _log(f"encoded latents {tuple(latents.shape)}; shift {shift:.4f} scale {scale:.4f}", start)
    stats = train_flow(pipe, latents, prompts, cfg, start)
    flow_seconds = time.perf_counter() - start
    pipe.save_pretrained(out / "pipeline")
    _log("saved the pipeline; training the matching score", start)
    from .matching import save_matching, train_matching

    net, matching = train_matching(
        steps=cfg.matching_steps,
        batch=cfg.matching_batch,
        seed=cfg.seed,
        num_images=cfg.matching_images,
        log=lambda m: print(m, flush=True),
    )
    save_matching(net, out / "matching.safetensors")
    record = {
        "config": asdict(cfg),
        "seconds_pipeline": flow_seconds,
        "seconds_total": time.perf_counter() - start,
        "vae_reconstruction": vae_metrics,
        "matching": matching,
        **stats,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    _log(f"saved to {out}", start)
    return record
