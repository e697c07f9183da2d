"""Where the milliseconds of one generation go: latentdiff vs diffusers on identical weights.

Both pipelines load the same folder (a randomly initialised ``--config``, or a saved model such as
``--model emoji``) and run DDIM with batched classifier-free guidance. Named stages (the U-Net and
text-encoder forwards, VAE decode, prompt encoding, the input checks, the scheduler's step, the
progress bar, ...) are wrapped with timers; each stage's time is *exclusive* (a stage's children are
subtracted from it), and "rest of the pipeline" is the call's wall time minus every named stage:
the pipeline's own Python (argument handling, tensor bookkeeping, the loop). The two pipelines
alternate call by call. A timer costs ~1 µs per entry, i.e. well under 1% of a call here.

    python benchmarks/profile_pipeline.py --config configs/tiny.yaml --batch 1 --repeats 20
    python benchmarks/profile_pipeline.py --model emoji --batch 1 --repeats 20
    python benchmarks/profile_pipeline.py --config configs/tiny.yaml --torch-profiler 15   # top ops

``--torch-profiler N`` also prints torch.profiler's N most expensive operators of one call each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict

import torch


class StageTimer:
    """Exclusive wall time per label of nested wrapped calls."""

    def __init__(self):
        self.exclusive = defaultdict(float)
        self.calls = defaultdict(int)
        self._stack: list[list] = []  # [label, child time]

    def wrap(self, fn, label):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._stack.append([label, 0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                _, child = self._stack.pop()
                self.exclusive[label] += dt - child
                self.calls[label] += 1
                if self._stack:
                    self._stack[-1][1] += dt
        return timed

    def patch(self, obj, attr, label):
        setattr(obj, attr, self.wrap(getattr(obj, attr), label))

    def reset(self):
        self.exclusive.clear()
        self.calls.clear()


def instrument_ours(pipe, timer: StageTimer, sampler: str):
    import latentdiff.denoisers as den
    import latentdiff.pipelines.text_to_image as t2i
    import latentdiff.prompts as prompts
    import latentdiff.samplers as smp

    timer.patch(pipe, "check_inputs", "input checks")
    timer.patch(pipe, "check_memory", "memory estimate")
    timer.patch(pipe, "chunks_needed", "long-prompt check (tokenize, count chunks)")
    timer.patch(pipe, "encode_prompt", "prompt encoding: parse + tokenize")
    timer.patch(prompts, "encode_prompts", "prompt encoding: parse + tokenize")
    timer.patch(pipe.text_encoder, "forward", "text encoder forward")
    timer.patch(t2i, "randn", "initial noise")
    timer.patch(pipe, "_timesteps", "timesteps")
    timer.patch(pipe.unet, "forward", "U-Net forward")
    timer.patch(pipe.vae, "decode", "VAE decode")
    timer.patch(pipe, "decode_latents", "decode: scale, isfinite, clamp")
    timer.patch(den.UNetDenoiser, "__call__", "U-Net adapter: dtype, casts, t")
    timer.patch(den.ClassifierFreeGuidance, "__call__", "CFG: cat, chunk, combine")
    timer.patch(smp, "_steps", "progress bar")
    smp.SAMPLERS[sampler] = timer.wrap(smp.SAMPLERS[sampler], "sampler: per-step math, tensors")


def instrument_theirs(pipe, timer: StageTimer):
    timer.patch(pipe, "check_inputs", "input checks")
    timer.patch(pipe, "encode_prompt", "prompt encoding: parse + tokenize")
    timer.patch(pipe.text_encoder, "forward", "text encoder forward")
    timer.patch(pipe, "prepare_latents", "initial noise")
    timer.patch(pipe.scheduler, "set_timesteps", "timesteps")
    timer.patch(pipe.unet, "forward", "U-Net forward")
    timer.patch(pipe.vae, "decode", "VAE decode")
    timer.patch(pipe.image_processor, "postprocess", "decode: scale, isfinite, clamp")
    timer.patch(pipe.scheduler, "step", "sampler: per-step math, tensors")
    timer.patch(pipe.scheduler, "scale_model_input", "sampler: per-step math, tensors")
    timer.patch(pipe, "progress_bar", "progress bar")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", default="configs/tiny.yaml", help="random weights of this architecture")
    src.add_argument("--model", default=None, help="a saved model (built-in name or folder) instead of --config")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--torch-profiler", type=int, default=0, metavar="N", help="also print the top N operators")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from latentdiff.io import resolve_model_dir
    from latentdiff.pipelines import TextToImagePipeline

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            folder = str(resolve_model_dir(args.model))
        else:
            from latentdiff.config import load_config
            from latentdiff.models import ModelConfig

            TextToImagePipeline.from_config(load_config(args.config, ModelConfig)).save_pretrained(tmp)
            folder = tmp
        ours = TextToImagePipeline.from_pretrained(folder)
        theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        theirs.scheduler = DDIMScheduler.from_config(theirs.scheduler.config)
        theirs.set_progress_bar_config(disable=True)
        spacing = theirs.scheduler.config.timestep_spacing
        size = ours.default_size
        prompts = ["a red apple on a table"] * args.batch

        def run_ours():
            ours(prompts, sampler="ddim", num_inference_steps=args.steps, guidance_scale=args.guidance, seed=0,
                 output_type="np", height=size, width=size, timestep_spacing=spacing, eta=0.0)

        def run_theirs():
            gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
            theirs(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gens,
                   output_type="np", height=size, width=size)

        if args.torch_profiler:
            from torch.profiler import ProfilerActivity, profile

            for name, fn in (("latentdiff", run_ours), ("diffusers", run_theirs)):
                fn()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    fn()
                print(f"== {name}: top {args.torch_profiler} operators of one call (self CPU time)")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.torch_profiler))

        t_ours, t_theirs = StageTimer(), StageTimer()
        instrument_ours(ours, t_ours, "ddim")
        instrument_theirs(theirs, t_theirs)
        for fn in (run_ours, run_theirs, run_ours, run_theirs):  # warm-up
            fn()
        t_ours.reset(), t_theirs.reset()
        walls = {"latentdiff": [], "diffusers": []}
        for _ in range(args.repeats):
            for name, fn in (("latentdiff", run_ours), ("diffusers", run_theirs)):
                t0 = time.perf_counter()
                fn()
                walls[name].append(time.perf_counter() - t0)

    n = args.repeats
    rows = {}
    for name, timer in (("latentdiff", t_ours), ("diffusers", t_theirs)):
        total = sum(walls[name]) / n
        stages = {k: v / n for k, v in timer.exclusive.items()}
        stages["rest of the pipeline"] = total - sum(stages.values())
        rows[name] = {"mean_s": total, "median_s": statistics.median(walls[name]), "stages_s": stages}
    labels = list(dict.fromkeys([*rows["latentdiff"]["stages_s"], *rows["diffusers"]["stages_s"]]))
    labels.sort(key=lambda k: (k == "rest of the pipeline", -rows["latentdiff"]["stages_s"].get(k, 0.0)))
    print(f"\nms per call (mean of {n}), batch {args.batch}, {args.steps} steps, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| stage | latentdiff | diffusers |\n|---|---|---|")
    for k in labels:
        a, b = rows["latentdiff"]["stages_s"].get(k), rows["diffusers"]["stages_s"].get(k)
        fmt = lambda v: "–" if v is None else f"{v * 1e3:.2f}"  # noqa: E731
        print(f"| {k} | {fmt(a)} | {fmt(b)} |")
    print(f"| **whole call (mean)** | **{rows['latentdiff']['mean_s'] * 1e3:.2f}** | "
          f"**{rows['diffusers']['mean_s'] * 1e3:.2f}** |")
    print(f"| whole call (median) | {rows['latentdiff']['median_s'] * 1e3:.2f} | "
          f"{rows['diffusers']['median_s'] * 1e3:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load": os.getloadavg(), **rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
