"""Memory and speed of the streamed (sharded, on-disk) U-Net data path (train/data.py), issue 13.

    python benchmarks/bench_data.py rss --sizes 2000 20000 --steps 20
    python benchmarks/bench_data.py speed --repeats 3 --steps 30

``rss``: the tiny U-Net (configs/tiny_unet.yaml, vae_from random) trains on N synthetic images
(rendered shapes of mixed sizes, kohya .txt captions, written once to /tmp/latentdiff-bench-shapes-N)
with ``data.streaming: true``, in a fresh process per run; the process reports its peak resident
memory (``ru_maxrss``, cache build included) and that of its DataLoader workers. The in-memory path
runs too, for contrast. Target: the streamed peak at 20,000 within 10% of the peak at 2,000.

``speed``: samples/s of training steps (the cache already built, set-up excluded: timed from the
first step to the export) on the embedded emoji, in-memory cache vs streamed cache, the two runs
alternating so background load hits both alike. Target: streamed no slower than in-memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_unet.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "TQDM_DISABLE": "1"}

CHILD = """
import json, resource, sys
from latentdiff.cli import main
rc = main(sys.argv[1:])
print("PEAK_RSS " + json.dumps({"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
sys.exit(rc)
"""


def shapes_folder(n: int) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from shapes import MIXED_SIZES, render_shapes

    folder = Path(tempfile.gettempdir()) / f"latentdiff-bench-shapes-{n}"
    if not (folder / f"{n - 1:06d}.txt").is_file():
        render_shapes(folder, [MIXED_SIZES[i % len(MIXED_SIZES)] for i in range(n)], seed=n)
    return folder


def train_args(out: Path, overrides: dict) -> list[str]:
    args = ["train", "unet", "--config", str(CONFIG), "--output-dir", str(out), "--device", "cpu", "--num-threads", "1",
            "--overwrite-output-dir"]
    base = {"data.validation_split": "", "validation_steps": 0, "checkpointing_steps": 0, "log_every": 10}
    for k, v in {**base, **overrides}.items():
        args += ["--set", f"{k}={v}"]
    return args


def rss(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for n in args.sizes:
            folder = shapes_folder(n)
            for streaming in (True, False):
                over = {"data.source": str(folder), "data.max_samples": 0, "data.streaming": streaming,
                        "data.num_workers": args.workers, "optim.max_train_steps": args.steps,
                        "optim.batch_size": args.batch, "cache_dir": f"{tmp}/cache-{n}-{streaming}"}
                t0 = time.perf_counter()
                res = subprocess.run([sys.executable, "-c", CHILD, *train_args(Path(tmp) / f"run-{n}", over)], env=ENV,
                                     capture_output=True, text=True)
                if res.returncode:
                    raise SystemExit(res.stderr[-3000:])
                peak = json.loads(res.stdout.split("PEAK_RSS ")[-1])
                rows.append({"images": n, "path": "streamed" if streaming else "in-memory", **peak,
                             "wall_s": round(time.perf_counter() - t0, 1)})
                print(json.dumps(rows[-1]), flush=True)
    streamed = {r["images"]: r["self_mb"] for r in rows if r["path"] == "streamed"}
    if len(streamed) >= 2:
        lo, hi = min(streamed), max(streamed)
        print(f"streamed peak RSS {hi} vs {lo} images: {streamed[hi]:.0f} / {streamed[lo]:.0f} MB = "
              f"{streamed[hi] / streamed[lo]:.3f} (target <= 1.10)")
    return rows


def speed(args) -> list[dict]:
    import torch

    from latentdiff.config import load_config
    from latentdiff.train import loop
    from latentdiff.train.unet import UNetTask, UNetTrainConfig

    torch.set_num_threads(1)
    results: dict[str, list[float]] = {"in-memory": [], "streamed": []}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for rep in range(args.repeats + 1):  # the first round builds the caches and is not counted
            for path in ("in-memory", "streamed"):
                cfg = load_config(CONFIG, UNetTrainConfig, {
                    "output_dir": f"{tmp}/{path}-{rep}", "device": "cpu", "cpu_threads": 1, "data.max_samples": 0,
                    "data.validation_split": "", "validation_steps": 0, "checkpointing_steps": 0,
                    "optim.max_train_steps": args.steps, "optim.batch_size": args.batch, "log_every": 10,
                    "data.streaming": path == "streamed", "data.num_workers": args.workers,
                    "cache_dir": f"{tmp}/cache"})
                task, marks = UNetTask(cfg), {}
                draw, export = task.draw, task.export

                def timed_draw(run, step, g, idx, draw=draw, marks=marks):
                    marks.setdefault("first", time.perf_counter())
                    return draw(run, step, g, idx)

                def timed_export(run, export=export, marks=marks):
                    marks["end"] = time.perf_counter()
                    return export(run)

                task.draw, task.export = timed_draw, timed_export
                loop.train(task)
                rate = args.steps * args.batch / (marks["end"] - marks["first"])
                if rep:
                    results[path].append(rate)
                print(f"round {rep} {path}: {rate:.0f} samples/s{'' if rep else ' (warm-up, not counted)'}", flush=True)
    rows = [{"path": p, "median_samples_per_s": round(statistics.median(v), 1), "runs": [round(x, 1) for x in v]}
            for p, v in results.items()]
    for r in rows:
        print(json.dumps(r))
    print(f"streamed / in-memory: {rows[1]['median_samples_per_s'] / rows[0]['median_samples_per_s']:.3f} "
          "(target >= 1.0)")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("rss")
    r.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--workers", type=int, default=2)
    s = sub.add_parser("speed")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    os.environ["TQDM_DISABLE"] = "1"
    print(f"load average {os.getloadavg()}", flush=True)
    rows = rss(args) if args.what == "rss" else speed(args)
    print(f"load average {os.getloadavg()}")
    return rows


if __name__ == "__main__":
    main()
