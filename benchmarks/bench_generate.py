"""Wall time of one 64x64 image from the built-in emoji model: 20 steps with classifier-free
guidance (one batched U-Net forward of 2 per step), prompt encoding and VAE decode included.

    python benchmarks/bench_generate.py --repeats 10
    python benchmarks/bench_generate.py --repeats 20 --prompt "red apple, twemoji style" \
        --prompt "red apple, twemoji style :2 AND red apple :-1"      # interleaved, side by side

Target (issue 4): < 1 s on the 2-core CPU. Reports the median and the spread, plus the load average
(other processes on the machine slow it down).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default=None, help="default: the model's own (latentdiff.json)")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's own; must be > 1 for CFG")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt to time (repeatable: the prompts run in turn within each repeat; default: red apple)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(args.model)
    args.sampler = args.sampler or pipe.defaults.sampler
    args.guidance = pipe.defaults.guidance_scale if args.guidance is None else args.guidance
    if args.guidance <= 1.0:
        raise ValueError(f"--guidance {args.guidance} turns classifier-free guidance off; the target is with CFG (> 1)")
    prompts = args.prompt or ["red apple"]
    run = lambda text, i: pipe(text, seed=i, sampler=args.sampler, num_inference_steps=args.steps,  # noqa: E731
                               guidance_scale=args.guidance)
    load_before = os.getloadavg()
    for text in prompts:
        run(text, 0)  # warm-up: oneDNN kernel selection, allocator
    all_times: dict[str, list[float]] = {text: [] for text in prompts}
    for i in range(args.repeats):
        for text in prompts:  # interleaved: a load change hits every prompt alike
            t0 = time.perf_counter()
            run(text, i)
            all_times[text].append(time.perf_counter() - t0)
    times = all_times[prompts[0]]
    result = {"prompt": prompts[0], "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
              "prompts": {text: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
                          for text, t in all_times.items()},
              "steps": args.steps, "sampler": args.sampler, "guidance": args.guidance,
              "threads": torch.get_num_threads(), "load_avg_1_5_15min": load_before, "load_avg_after": os.getloadavg(),
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
