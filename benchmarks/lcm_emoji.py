"""Generation time of the LCM-LoRA (2/4/8 lcm steps, guidance 1) against the model's 20-step default,
one image, in one interleaved run (default, lcm2, lcm4, lcm8, default, ...), medians.

    python benchmarks/lcm_emoji.py --model emoji --lora runs/emoji_lcm/final --repeats 7 --threads 1

``--grid PATH`` also writes a labelled grid: the 20-step default and 2/4/8 lcm steps (rows) × the
prompts of ``--grid-prompts`` (columns), seed 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--lora", required=True)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    p.add_argument("--grid", default="", help="also write a labelled grid PNG here")
    p.add_argument("--grid-prompts", default="red apple|grinning face|cat face|blue heart|green circle|pizza|"
                   "thumbs up: dark skin tone|flag: France", help="'|'-separated")
    a = p.parse_args(argv)

    import torch

    from latentdiff.pipelines import TextToImagePipeline

    torch.set_num_threads(a.threads)
    base = TextToImagePipeline.from_pretrained(a.model)
    lcm = TextToImagePipeline.from_pretrained(a.model)
    lcm.load_lora(a.lora, adapter_name="lcm")
    runs = {"default": lambda s: base("red apple", seed=s),
            **{f"lcm{n}": (lambda s, n=n: lcm("red apple", seed=s, sampler="lcm", num_inference_steps=n,
                                              guidance_scale=1.0)) for n in (2, 4, 8)}}
    for f in runs.values():  # warm-up
        f(0)
    times = {k: [] for k in runs}
    for r in range(a.repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f(r)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"median_s": med, "ratio_to_default": {k: v / med["default"] for k, v in med.items()},
           "defaults": {"sampler": base.defaults.sampler, "steps": base.defaults.num_inference_steps,
                        "guidance_scale": base.defaults.guidance_scale},
           "load_average": os.getloadavg(), "threads": a.threads, "repeats": a.repeats,
           "command": " ".join(["python"] + sys.argv)}
    print(json.dumps(out, indent=2))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=2)
    if a.grid:
        from latentdiff.evaluation import save_labelled_grid

        prompts = a.grid_prompts.split("|")
        rows, labels = [], []
        for name, (pipe, kw) in {"20-step default": (base, {}), **{
                f"lcm {n} steps": (lcm, {"sampler": "lcm", "num_inference_steps": n, "guidance_scale": 1.0})
                for n in (2, 4, 8)}}.items():
            latents = pipe(prompts, seed=[0] * len(prompts), output_type="latent", **kw).latents
            rows.append(pipe.decode_latents(latents).float().cpu())
            labels += [f"{name}: {p}"[:28] for p in prompts]
        save_labelled_grid(torch.cat(rows), labels, a.grid, cols=len(prompts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
