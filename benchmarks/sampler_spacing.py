"""Sampler convergence on the emoji model: which sampler *and timestep spacing* reach the ODE's answer
in the fewest steps, at several classifier-free guidance scales?

For N test captions (a seeded random sample) and each CFG scale: a 1000-step DDIM (η = 0) solution
from the same initial noise is the reference (every timestep 999 … 0); then DDIM and DPM-Solver++(2M)
at 5/10/20/50 steps on trailing, linspace and logsnr spacings. Reported: latent RMSE against the
reference (√mean((z − z_ref)²) per image, averaged).

Why spacing matters: every spacing but logsnr ends with a jump from the last listed timestep (t = 99
for trailing at 10 steps) straight to x̂0; that last step's error puts a floor under every sampler,
whatever its order. logsnr (uniform in λ = log(α/σ), DPM-Solver's recommendation, diffusers'
``use_lu_lambdas``) ends at t = 0.

    python benchmarks/sampler_spacing.py --n 16 --cfg 2,5          # ~20 min on 2 idle CPU cores
    python benchmarks/sampler_spacing.py --n 4 --cfg 2 --steps 5,10 --reference-steps 200   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = "dpmpp_2m:trailing,dpmpp_2m:linspace,dpmpp_2m:logsnr,ddim:logsnr,ddim:trailing,ddim:linspace"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--n", type=int, default=16, help="test captions (a seeded random sample)")
    p.add_argument("--cfg", default="2,5", help="comma-separated CFG scales")
    p.add_argument("--steps", default="5,10,20,50")
    p.add_argument("--variants", default=VARIANTS, help="comma-separated sampler:spacing pairs")
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", default=str(ROOT / "docs" / "sampler_spacing.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from latentdiff.config import atomic_write_text
    from latentdiff.data.datasets import load_emoji
    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(args.model)
    captions = list(load_emoji("test")["text"])
    pick = np.random.default_rng(0).choice(len(captions), args.n, replace=False)
    prompts = [captions[i] for i in pick]
    steps = [int(s) for s in args.steps.split(",")]
    variants = [v.split(":") for v in args.variants.split(",")]
    t_start = time.perf_counter()
    rows = []
    for cfg in (float(w) for w in args.cfg.split(",")):
        kw = {"seed": 0, "guidance_scale": cfg, "output_type": "latent"}
        ref = pipe(prompts, sampler="ddim", num_inference_steps=args.reference_steps, timestep_spacing="trailing",
                   **kw).latents
        for sampler, spacing in variants:
            for n in steps:
                z = pipe(prompts, sampler=sampler, num_inference_steps=n, timestep_spacing=spacing, **kw).latents
                rmse = float((z - ref).pow(2).flatten(1).mean(1).sqrt().mean())
                rows.append({"cfg": cfg, "sampler": sampler, "spacing": spacing, "steps": n, "latent_rmse": rmse})
                print(f"cfg {cfg:g} {sampler:9s} {spacing:9s} {n:3d} {rmse:.4f}", flush=True)
    result = {"model": args.model, "n": args.n, "prompts": prompts, "reference": f"ddim {args.reference_steps} steps",
              "rows": rows, "seconds": round(time.perf_counter() - t_start, 1), "threads": torch.get_num_threads(),
              "load_avg": os.getloadavg()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
