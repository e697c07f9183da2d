"""Benchmark the U-Net training step: cached latents + text embeddings versus encoding through the
VAE and the text encoder every step (what diffusers' train_text_to_image example does), with the
same model (configs/emoji.yaml) and batch; plus the fraction of this CPU's measured fp32 matmul
FLOP/s that the U-Net training step reaches (FLOPs counted with torch.utils.flop_counter).

    python benchmarks/bench_train.py --batch-size 32 --steps 10 --threads 1
    python benchmarks/bench_train.py --batch-size 256 --steps 20 --device cuda

Three variants, all with the same U-Net step (forward, backward, AdamW):
- cached: z = scaling·(μ + σ·n) and the caption embedding are indexed from tensors (our trainer);
- encode: VAE encoder and text encoder forwards (frozen, no grad) on in-memory uint8 images;
- diffusers-style: additionally decode the PNGs with PIL, apply the transforms and tokenize the
  captions every step, as train_text_to_image's dataset transform does.

Not a test: numbers depend on the machine and its load (printed with `uptime`).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latentdiff.config import load_config
from latentdiff.models import ModelConfig
from latentdiff.tokenizer import build_clip_tokenizer
from latentdiff.train.unet import diffusion_loss

ROOT = Path(__file__).resolve().parents[1]


def matmul_flops_per_s(n: int = 1024, reps: int = 20) -> float:
    """Best-of fp32 matmul throughput (2·n³ FLOPs per n×n product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops_per_s_on(device, n: int = 1024, reps: int = 20) -> float:
    if device.type == "cpu":
        return matmul_flops_per_s(n, reps)
    torch.backends.cuda.matmul.allow_tf32 = False  # true fp32
    n = 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "configs" / "emoji.yaml"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="print where the U-Net step spends its time")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    mc = load_config(args.model, ModelConfig)
    vae = mc.vae.build(mc.resolution).eval().requires_grad_(False).to(device)
    te = mc.text_encoder.build().eval().requires_grad_(False).to(device)
    f = mc.vae_scale_factor
    unet = mc.unet.build(mc.resolution // f, mc.vae.latent_channels, mc.text_encoder.hidden_size).train().to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ac = mc.scheduler.alphas_cumprod().to(device)
    tok = build_clip_tokenizer()
    B = args.batch_size
    C, h = mc.vae.latent_channels, mc.resolution // f

    # the emoji training split as PNG bytes + captions; the in-memory uint8 tensor; the cache
    import io

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(ROOT / "latentdiff" / "data" / "emoji" / "emoji.parquet", columns=["image", "text"])
    pngs = [r["bytes"] for r in table.column("image").to_pylist()]
    captions = table.column("text").to_pylist()
    N = len(captions)
    images = torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in pngs]))
    images = images.permute(0, 3, 1, 2).contiguous().to(device)                  # uint8 (N, 3, R, R)
    ids = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        stats = [vae.encode(images[i:i + 256].float() / 127.5 - 1).latent_dist for i in range(0, N, 256)]
        mean, std = torch.cat([d.mean for d in stats]), torch.cat([d.std for d in stats])
        emb_table = torch.cat([te(ids[i:i + 256])[0] for i in range(0, N, 256)])
    g = torch.Generator(device=device).manual_seed(0)

    def unet_step(z0, emb):
        t = torch.randint(0, 1000, (B,), generator=g, device=device)
        eps = torch.randn(z0.shape, generator=g, device=device)
        loss = diffusion_loss(unet, z0, emb, t, eps, ac, "epsilon", 5.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def cached_step():
        idx = torch.randint(0, N, (B,), generator=g, device=device)
        z0 = (mean[idx] + std[idx] * torch.randn(B, C, h, h, generator=g, device=device)) * 0.18
        unet_step(z0, emb_table[idx])

    def encode_step(pixels, token_ids):
        with torch.no_grad():
            d = vae.encode(pixels).latent_dist
            z0 = (d.mean + d.std * torch.randn(B, C, h, h, generator=g, device=device)) * 0.18
            emb = te(token_ids)[0]
        unet_step(z0, emb)

    def encode_every_step():
        idx = torch.randint(0, N, (B,), generator=g, device=device)
        encode_step(images[idx].float() / 127.5 - 1, ids[idx])

    rng = np.random.default_rng(0)

    def diffusers_style_step():  # PIL decode + transforms + tokenization per sample, then encode
        idx = rng.integers(0, N, B)
        pix = []
        for i in idx:
            im = Image.open(io.BytesIO(pngs[i])).convert("RGB").resize((mc.resolution, mc.resolution),
                                                                       Image.Resampling.BILINEAR)
            pix.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1)
        token_ids = tok([captions[i] for i in idx], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        encode_step(torch.stack(pix).to(device), token_ids.to(device))

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync(device)
        return (time.perf_counter() - t0) / args.steps

    load_before = os.getloadavg()
    t_cached = timed(cached_step)
    t_encode = timed(encode_every_step)
    t_diffusers = timed(diffusers_style_step)

    # FLOPs of one U-Net training step (forward + backward) at this batch
    from torch.utils.flop_counter import FlopCounterMode

    z0 = torch.randn(B, C, h, h, device=device)
    emb = emb_table[:B]
    with FlopCounterMode(display=False) as fc:
        t = torch.randint(0, 1000, (B,), device=device)
        loss = F.mse_loss(unet(z0, t, encoder_hidden_states=emb).sample, z0)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    step_flops = fc.get_total_flops()
    peak = matmul_flops_per_s_on(device)
    load_after = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPUs, threads {torch.get_num_threads()}"
    print(f"machine: {platform.machine()}, {where}, torch {torch.__version__}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}; uptime: {uptime}")
    print(f"model {Path(args.model).name}: U-Net {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M params, "
          f"batch {B}, latents {C}x{h}x{h}, {N} emoji")
    print("| variant | s/step | samples/s | cached is faster by |")
    print("|---|---|---|---|")
    print(f"| cached latents + embeddings (latentdiff) | {t_cached:.4f} | {B / t_cached:.1f} | |")
    print(f"| VAE + text encoder every step, tensors in memory | {t_encode:.4f} | {B / t_encode:.1f} | "
          f"{t_encode / t_cached:.2f}x |")
    print(f"| diffusers-style: PIL decode + transforms + tokenize + encoders every step | {t_diffusers:.4f} | "
          f"{B / t_diffusers:.1f} | {t_diffusers / t_cached:.2f}x |")
    achieved = step_flops / t_cached
    print(f"U-Net train step: {step_flops / 1e9:.2f} GFLOP (FlopCounterMode, fwd+bwd); "
          f"{achieved / 1e9:.1f} GFLOP/s achieved (cached step incl. AdamW) vs {peak / 1e9:.1f} GFLOP/s fp32 matmul "
          f"= {100 * achieved / peak:.0f}%")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(3):
                cached_step()
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15))


if __name__ == "__main__":
    main()
