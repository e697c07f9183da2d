"""Sampler accuracy per network evaluation on the shipped emoji model, ours and diffusers'.

Every sampler × sigma schedule × step count generates the same prompts from the same initial noise;
the error is the latent RMSE against a 1000-step DDIM (η = 0) solution of the probability-flow ODE
(latentdiff.evaluation.sampler_report). diffusers' StableDiffusionPipeline runs its own schedulers on the
same weights, prompts, seeds and guidance at ~10 NFE for the comparison the issue asks for.

    python benchmarks/sampler_accuracy.py --out docs/sampler_accuracy.json --plot docs/images/sampler_accuracy.png
"""

from __future__ import annotations

import argparse
import json
import time

import torch

PROMPTS = ["red apple", "smiling face with heart-eyes", "flag: France", "cat face", "blue heart",
           "woman technologist: medium skin tone", "pizza", "rocket"]


def diffusers_rows(pipe, prompts, z_ref, guidance_scale, seed=0):
    """diffusers' schedulers at 10 network evaluations on our model folder, same noise and guidance."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    from latentdiff.io import resolve_model_dir

    sd = StableDiffusionPipeline.from_pretrained(resolve_model_dir(pipe.name), safety_checker=None,
                                                 torch_dtype=torch.float32)
    sd.set_progress_bar_config(disable=True)
    base = dict(sd.scheduler.config)
    configs = [  # (label, scheduler class, config overrides, steps giving ~10 NFE)
        ("DDIMScheduler", "DDIMScheduler", {}, 10),
        ("EulerDiscreteScheduler", "EulerDiscreteScheduler", {}, 10),
        ("EulerDiscreteScheduler karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}, 10),
        ("HeunDiscreteScheduler karras", "HeunDiscreteScheduler", {"use_karras_sigmas": True}, 5),
        ("LMSDiscreteScheduler karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}, 10),
        ("DPMSolverMultistepScheduler", "DPMSolverMultistepScheduler", {}, 10),
        ("DPMSolverMultistepScheduler karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 10),
        ("DPMSolverMultistepScheduler lu_lambdas", "DPMSolverMultistepScheduler", {"use_lu_lambdas": True}, 10),
        ("UniPCMultistepScheduler", "UniPCMultistepScheduler", {}, 10),
        ("UniPCMultistepScheduler karras", "UniPCMultistepScheduler", {"use_karras_sigmas": True}, 10),
    ]
    rows = []
    for label, cls, overrides, steps in configs:
        sd.scheduler = getattr(diffusers, cls).from_config({**base, **overrides})
        gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        nfe = []
        unet_forward = sd.unet.forward

        def counting(*a, nfe=nfe, unet_forward=unet_forward, **k):
            nfe.append(1)
            return unet_forward(*a, **k)

        sd.unet.forward = counting
        t0 = time.perf_counter()
        z = sd(list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens,
               output_type="latent").images
        sd.unet.forward = unet_forward
        rows.append({"scheduler": label, "steps": steps, "nfe": len(nfe),
                     "latent_rmse": float((z.float() - z_ref).pow(2).flatten(1).mean(1).sqrt().mean()),
                     "seconds_per_image": (time.perf_counter() - t0) / len(prompts)})
        print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--steps", default="5,10,20,50")
    p.add_argument("--schedules", default="default,karras,exponential,sgm_uniform,beta")
    p.add_argument("--samplers", default="ddim,ddpm,dpmpp_2m,euler,euler_a,heun,dpm2,dpm2_a,lms,dpmpp_2s_a,dpmpp_sde,"
                                         "dpmpp_2m_sde,dpmpp_3m_sde,unipc")
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--reference", default="ddim", help="ddim (DDIM on every --reference-steps trailing timestep) or "
                                                       "heun (Heun on --reference-steps Karras σ: second order)")
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    torch.manual_seed(0)

    from latentdiff.evaluation import generate, plot_sampler_report, sampler_report
    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(args.model)
    prompts = PROMPTS[: args.prompts]
    t0 = time.perf_counter()
    if args.reference == "heun":
        _, z_ref = generate(pipe, prompts, steps=args.reference_steps, sampler="heun", sigma_schedule="karras",
                            progress=False)
    else:
        _, z_ref = generate(pipe, prompts, steps=args.reference_steps, sampler="ddim", timestep_spacing="trailing",
                            progress=False)
    print(f"reference: {time.perf_counter() - t0:.0f} s", flush=True)
    report = sampler_report(pipe, prompts, {}, None, samplers=args.samplers.split(","),
                            steps=[int(s) for s in args.steps.split(",")], schedules=args.schedules.split(","),
                            reference_steps=args.reference_steps, progress=False, reference_latents=z_ref)
    report["reference"] = (f"heun, {args.reference_steps} karras steps" if args.reference == "heun"
                           else f"ddim, {args.reference_steps} steps, eta=0")
    report["diffusers"] = diffusers_rows(pipe, prompts, z_ref, pipe.defaults.guidance_scale)
    report["guidance_scale"] = pipe.defaults.guidance_scale
    deterministic = [r for r in report["rows"] if not r["stochastic"] and r["nfe"] <= 10]
    best = min(deterministic, key=lambda r: r["latent_rmse"])
    best_d = min(report["diffusers"], key=lambda r: r["latent_rmse"])
    report["best_10_nfe"] = {"ours": best, "diffusers": best_d}
    print("best of ours at <= 10 NFE:", best)
    print("best of diffusers at ~10 NFE:", best_d)
    if args.out:
        from latentdiff.config import atomic_write_text

        atomic_write_text(args.out, json.dumps(report, indent=1))
    if args.plot:
        plot_sampler_report(report, args.plot, title=f"emoji model, {len(prompts)} prompts: latent RMSE vs NFE")


if __name__ == "__main__":
    main()
