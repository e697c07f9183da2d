"""latentdiff vs diffusers' StableDiffusionPipeline on identical weights, steps and guidance.

Both pipelines load the same saved folder; both run DDIM with classifier-free guidance (one
batched UNet forward per step) in fp32 (CPU) or fp16 (CUDA). Reported: whole-generation wall time
(tiny config, batch 1 and 8) and seconds per denoising step (SD-1.5 architecture at 512x512,
random weights), images/s, and with ``--rss`` each pipeline's resident memory after loading and warm-up, and
its peak while generating (Linux VmHWM, reset after the warm-up; a fresh process per pipeline and batch,
since both share the timing process). ``--model emoji`` times a saved model instead of a
config's random weights; ``--compile`` compares ``ours.compile()`` (U-Net and VAE decoder) with
``theirs.unet = torch.compile(theirs.unet)``. Run:

    python benchmarks/bench_pipeline.py --config configs/tiny.yaml --batch 1 8 --steps 20 --repeats 5
    python benchmarks/bench_pipeline.py --model emoji --batch 1 8 32 --threads 1 --rss
    python benchmarks/bench_pipeline.py --config configs/tiny.yaml --batch 1 8 32 --threads 1 --compile
    python benchmarks/bench_pipeline.py --config configs/sd15.yaml --batch 1 --steps 3 --repeats 2 --device cuda
    python benchmarks/bench_pipeline.py --config configs/sd15.yaml --batch 1 --steps 2 --repeats 2 --warmup 1 --latent
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def _memory_mib() -> dict:
    """Linux: this process's resident set now and its peak since the last :func:`_reset_peak`."""
    text = open("/proc/self/status").read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
        f.write("5")


def timed_pair(fn_a, fn_b, repeats: int, sync, warmup: int = 2) -> tuple[list[float], list[float]]:
    """Alternate a and b (after ``warmup`` calls of each) so clock ramps and background load hit both alike."""
    for fn in (fn_a, fn_b) * warmup:  # warm-up: allocations, oneDNN/cuDNN kernel selection, GPU clocks, compiling
        fn()
    sync()
    out_a, out_b = [], []
    for _ in range(repeats):
        for fn, out in ((fn_a, out_a), (fn_b, out_b)):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
    return out_a, out_b


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--model", default=None, help="a saved model (built-in name, folder) instead of --config")
    p.add_argument("--compile", action="store_true", help="compile both pipelines' networks first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--rss", action="store_true", help="also peak RSS of each pipeline, one process each")
    p.add_argument("--only", choices=["ours", "diffusers"], default=None, help=argparse.SUPPRESS)  # (--rss child)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each pipeline first")
    p.add_argument("--latent", action="store_true", help="stop at the latents (no VAE decode): per-step timing")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig
    from latentdiff.pipelines import TextToImagePipeline

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    results = {"config": args.model or args.config, "device": args.device, "dtype": str(dtype), "steps": args.steps,
               "compile": args.compile, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            from latentdiff.io import resolve_model_dir

            folder = str(resolve_model_dir(args.model))
        else:
            TextToImagePipeline.from_config(load_config(args.config, ModelConfig)).save_pretrained(tmp)
            folder = tmp
        ours = theirs = None
        if args.only != "diffusers":
            ours = TextToImagePipeline.from_pretrained(folder, torch_dtype=dtype, device=args.device)
            size = ours.default_size
        if args.only != "ours":
            theirs = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None)
            theirs.scheduler = DDIMScheduler.from_config(theirs.scheduler.config)
            theirs = theirs.to(args.device)
            theirs.set_progress_bar_config(disable=True)
            size = theirs.unet.config.sample_size * theirs.vae_scale_factor
            spacing = theirs.scheduler.config.timestep_spacing
        else:
            spacing = ours.scheduler_config.timestep_spacing
        if args.compile:
            if ours is not None:
                ours.compile()
            if theirs is not None:
                theirs.unet = torch.compile(theirs.unet)
        out_type = "latent" if args.latent else "np"
        for b in args.batch:
            prompts = ["a red apple on a table"] * b

            def run_ours(prompts=prompts):  # DDIM with diffusers' timestep spacing, η = 0
                ours(prompts, sampler="ddim", num_inference_steps=args.steps, guidance_scale=args.guidance,
                     seed=0, output_type=out_type, height=size, width=size, timestep_spacing=spacing, eta=0.0)

            def run_theirs(prompts=prompts, b=b):
                gens = [torch.Generator().manual_seed(i) for i in range(b)]
                theirs(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gens,
                       output_type=out_type, height=size, width=size)

            if args.only:  # a --rss child: this pipeline alone, then its peak RSS
                fn = run_ours if args.only == "ours" else run_theirs
                fn(), fn()  # warm-up (and compilation)
                sync()
                loaded = _memory_mib()["VmRSS"]
                _reset_peak()
                for _ in range(args.repeats):
                    fn()
                sync()
                print(json.dumps({"loaded_rss_mib": loaded, "peak_rss_mib": _memory_mib()["VmHWM"]}))
                return None
            t_ours, t_theirs = timed_pair(run_ours, run_theirs, args.repeats, sync, args.warmup)
            row = {"batch": b, "ours_s": statistics.median(t_ours), "diffusers_s": statistics.median(t_theirs)}
            row["ratio"] = row["ours_s"] / row["diffusers_s"]
            row["ours_images_per_s"] = b / row["ours_s"]
            row["diffusers_images_per_s"] = b / row["diffusers_s"]
            row["ours_s_per_step"] = row["ours_s"] / args.steps
            row["diffusers_s_per_step"] = row["diffusers_s"] / args.steps
            row["load"] = os.getloadavg()[0]
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
        if args.rss:
            for row in results["runs"]:
                for who in ("ours", "diffusers"):
                    cmd = [sys.executable, __file__, "--batch", str(row["batch"]), "--steps", str(args.steps),
                           "--repeats", "1", "--guidance", str(args.guidance), "--device", args.device,
                           "--threads", str(torch.get_num_threads()), "--only", who]
                    cmd += ["--model", folder] if args.model else ["--config", args.config]
                    cmd += ["--compile"] if args.compile else []
                    cmd += ["--latent"] if args.latent else []
                    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True)
                                     .stdout.strip().splitlines()[-1])
                    row[f"{who}_loaded_rss_mib"], row[f"{who}_peak_rss_mib"] = out["loaded_rss_mib"], out["peak_rss_mib"]
                print(json.dumps({k: v for k, v in row.items() if "rss" in k or k == "batch"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
