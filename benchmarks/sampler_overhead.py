"""Per-step time of each sampler against the diffusers scheduler that implements it, on identical weights.

Two columns per sampler: with a free model (the sampler's own per-step overhead: its arithmetic, σ → t
interpolation, bookkeeping) and with the tiny U-Net of configs/tiny.yaml (what a step costs end to end).
Median of --repeats runs of --steps steps; a latent batch of 4 × 4 × 32 × 32.

    python benchmarks/sampler_overhead.py --out docs/sampler_overhead.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time

import torch

DIFFUSERS = {  # sampler -> (diffusers class, config overrides)
    "ddim": ("DDIMScheduler", {}), "ddpm": ("DDPMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}), "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}), "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}), "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}), "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
SCHED = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
             timestep_spacing="trailing")


def run_ours(name, model, x, steps, ac):
    from latentdiff.denoisers import EpsFunction
    from latentdiff.diffusion import make_sigmas
    from latentdiff.samplers import count_evaluations, get_sampler

    levels = make_sigmas("default", steps, ac, spacing="trailing")
    t0 = time.perf_counter()
    get_sampler(name)(EpsFunction(model, ac), x, levels, generator=torch.Generator().manual_seed(0))
    return (time.perf_counter() - t0) / count_evaluations(name, levels, ac)


def run_diffusers(name, model, x, steps):
    import diffusers

    cls, overrides = DIFFUSERS[name]
    sched = getattr(diffusers, cls)(**SCHED, **overrides)
    takes_gen = "generator" in inspect.signature(sched.step).parameters
    t0 = time.perf_counter()
    sched.set_timesteps(steps)
    sample = x * sched.init_noise_sigma
    calls = 0
    for t in sched.timesteps:
        eps = model(sched.scale_model_input(sample, t), t)
        calls += 1
        kw = {"generator": torch.Generator().manual_seed(0)} if takes_gen else {}
        sample = sched.step(eps, t, sample, **kw).prev_sample
    return (time.perf_counter() - t0) / calls


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)

    from latentdiff.config import load_config
    from latentdiff.diffusion import make_alphas_cumprod
    from latentdiff.models import ModelConfig
    from latentdiff.pipelines import TextToImagePipeline

    ac = make_alphas_cumprod()
    pipe = TextToImagePipeline.from_config(load_config("configs/tiny.yaml", ModelConfig), seed=0)
    unet = pipe.unet
    cond = torch.randn(4, 77, unet.config.cross_attention_dim)
    x = torch.randn(4, unet.config.in_channels, 32, 32)

    def free(x, t):
        return 0.5 * x

    @torch.no_grad()
    def net(x, t):
        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0])
        return unet(x, t.float() if t.is_floating_point() else t, encoder_hidden_states=cond).sample

    rows = []
    for name in DIFFUSERS:
        row = {"sampler": name}
        for label, model in (("free", free), ("unet", net)):
            ours = statistics.median(run_ours(name, model, x, args.steps, ac) for _ in range(args.repeats))
            theirs = statistics.median(run_diffusers(name, model, x, args.steps) for _ in range(args.repeats))
            row[f"ours_ms_{label}"], row[f"diffusers_ms_{label}"] = 1e3 * ours, 1e3 * theirs
        rows.append(row)
        print(f"{name:13s} free model: ours {row['ours_ms_free']:.3f} ms/eval, diffusers {row['diffusers_ms_free']:.3f}"
              f" | tiny U-Net: ours {row['ours_ms_unet']:.2f}, diffusers {row['diffusers_ms_unet']:.2f}", flush=True)
    result = {"steps": args.steps, "repeats": args.repeats, "latents": list(x.shape), "rows": rows,
              "threads": torch.get_num_threads()}
    if args.out:
        from latentdiff.config import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
