"""latentdiff vs diffusers' StableDiffusionPipeline on identical weights, steps and guidance.

Both pipelines load the same saved folder; both run DDIM with classifier-free guidance (one
batched UNet forward per step) in fp32 (CPU) or fp16 (CUDA). Reported: whole-generation wall time
(tiny config, batch 1 and 8) and seconds per denoising step (SD-1.5 architecture at 512x512,
random weights). Run:

    python benchmarks/bench_pipeline.py --config configs/tiny.yaml --batch 1 8 --steps 20 --repeats 5
    python benchmarks/bench_pipeline.py --config configs/sd15.yaml --batch 1 --steps 3 --repeats 2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch


def timed_pair(fn_a, fn_b, repeats: int, sync) -> tuple[list[float], list[float]]:
    """Alternate a and b (after a warm-up of each) so clock ramps and background load hit both alike."""
    for fn in (fn_a, fn_b, fn_a, fn_b):  # warm-up: allocations, oneDNN/cuDNN kernel selection, GPU clocks
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
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)

    from diffusers import StableDiffusionPipeline

    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig
    from latentdiff.pipelines import TextToImagePipeline

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    cfg = load_config(args.config, ModelConfig)
    results = {"config": args.config, "device": args.device, "dtype": str(dtype), "steps": args.steps,
               "torch": torch.__version__, "threads": torch.get_num_threads(), "load": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        TextToImagePipeline.from_config(cfg).save_pretrained(tmp)
        ours = TextToImagePipeline.from_pretrained(tmp, torch_dtype=dtype, device=args.device)
        theirs = StableDiffusionPipeline.from_pretrained(tmp, torch_dtype=dtype, safety_checker=None).to(args.device)
        theirs.set_progress_bar_config(disable=True)
        size = cfg.resolution
        for b in args.batch:
            prompts = ["a red apple on a table"] * b

            def run_ours(prompts=prompts):
                ours(prompts, sampler="ddim", num_inference_steps=args.steps, guidance_scale=args.guidance,
                     seed=0, output_type="np", height=size, width=size)

            def run_theirs(prompts=prompts, b=b):
                gens = [torch.Generator().manual_seed(i) for i in range(b)]
                theirs(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gens,
                       output_type="np", height=size, width=size)

            t_ours, t_theirs = timed_pair(run_ours, run_theirs, args.repeats, sync)
            row = {"batch": b, "ours_s": statistics.median(t_ours), "diffusers_s": statistics.median(t_theirs)}
            row["ratio"] = row["ours_s"] / row["diffusers_s"]
            row["ours_s_per_step"] = row["ours_s"] / args.steps
            row["diffusers_s_per_step"] = row["diffusers_s"] / args.steps
            results["runs"].append(row)
            print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
