"""A measured LoRA fine-tune: teach the emoji model (Noto colour emoji) Symbola's monochrome line art.

1. Train (unless --lora is given): ``latentdiff.train.lora`` with configs/emoji_lora_symbola.yaml on
   the 1,032 Symbola training images, captions "<CLDR name>, symbola line art". Wall time recorded.
2. Evaluate on the 120 held-out test emoji (never seen by the LoRA, nor — for the Noto build's test
   split — by the base model): one image per name, same seed before and after, prompt
   "<name>, symbola line art":
   - before: the base model; after: base + LoRA (scale 1);
   - leak: base + LoRA with the plain prompt "<name>" (does the style stay behind its trigger?);
   - references: the real Symbola renderings (the target) and the real Noto images (the base style).
   Metrics: mean HSV saturation (0 = grey, Symbola is black on white) and the share of colourful
   pixels (S > 0.25 and V > 0.2). With --evaluator (the clean pixel classifier of `latentdiff eval`,
   trained on real Noto images), content too: the share of images it assigns to the emoji's group,
   for every row above and for the base model with the plain prompt (what the LoRA must not break).
3. Writes a before/after grid (rows: Symbola target, base, base + LoRA) to --grid and the numbers to
   --json, and prints a markdown table.

    python benchmarks/lora_symbola.py                                   # train, then evaluate (CPU: see docs/lora.md)
    python benchmarks/lora_symbola.py --lora runs/lora_symbola/final    # evaluate an existing LoRA
    python benchmarks/lora_symbola.py --base path/to/pipeline --max-train-steps 2 --n 4 \\
        --output-dir /tmp/smoke --grid /tmp/smoke/grid.png --json /tmp/smoke/r.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STYLE = ", symbola line art"
logger = logging.getLogger("latentdiff.bench")


def saturation_stats(images) -> dict:
    """Mean HSV saturation in [0, 1] and the share of colourful pixels (S > 0.25, V > 0.2)."""
    hsv = np.stack([np.asarray(im.convert("RGB").convert("HSV"), dtype=np.float32) / 255.0 for im in images])
    s, v = hsv[..., 1], hsv[..., 2]
    return {"mean_saturation": round(float(s.mean()), 4),
            "colourful_pixels": round(float(((s > 0.25) & (v > 0.2)).mean()), 4)}


def test_split(n: int, resolution: int):
    """(names, Symbola images, Noto images or None) of the first n held-out test emoji."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from latentdiff.train.common import embedded_parquet

    sym = pq.read_table(embedded_parquet("emoji_symbola"), columns=["image", "text", "codepoints", "split"]).to_pylist()
    sym = [r for r in sym if r["split"] == "test"][: n or None]
    groups = [r["group"] for r in pq.read_table(embedded_parquet("emoji_symbola"), columns=["group", "split"]).to_pylist()
              if r["split"] == "test"][: n or None]
    noto = {r["codepoints"]: r for r in pq.read_table(embedded_parquet("emoji"),
                                                      columns=["image", "codepoints"]).to_pylist()}

    def load(png):
        return Image.open(io.BytesIO(png["bytes"])).convert("RGB").resize((resolution, resolution), Image.LANCZOS)

    names = [r["text"] for r in sym]
    targets = [load(r["image"]) for r in sym]
    base_style = [load(noto[r["codepoints"]]["image"]) for r in sym if r["codepoints"] in noto]
    return names, targets, base_style, groups


def group_accuracy(net, label_names, images, groups) -> float:
    """Share of ``images`` the clean judge assigns to their emoji's group."""
    import torch

    from latentdiff.evaluation import evaluator_outputs

    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                     for im in images])
    pred = evaluator_outputs(net, x)[0]["group"]
    index = {g: i for i, g in enumerate(label_names["group"])}
    y = torch.tensor([index[g] for g in groups])
    return round(float((pred == y).float().mean()), 4)


def generate(pipe, prompts, seeds, steps, batch=16):
    out = []
    for i in range(0, len(prompts), batch):
        out += pipe(prompts[i:i + batch], seed=seeds[i:i + batch], num_inference_steps=steps).images
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "emoji_lora_symbola.yaml"))
    p.add_argument("--base", default=None, help="override the config's base model (default: emoji)")
    p.add_argument("--lora", default=None, help="evaluate this LoRA instead of training one")
    p.add_argument("--output-dir", default=None, help="training output (default: the config's, runs/lora_symbola)")
    p.add_argument("--max-train-steps", type=int, default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--n", type=int, default=0, help="held-out emoji to evaluate (0 = all 120)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--grid", default=str(ROOT / "docs" / "lora_before_after.png"))
    p.add_argument("--grid-n", type=int, default=8, help="columns of the grid")
    p.add_argument("--json", default=str(ROOT / "docs" / "lora_symbola.json"))
    p.add_argument("--evaluator", default=None,
                   help="folder of `latentdiff eval`'s clean classifier (e.g. runs/evaluator-emoji): adds group accuracy")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from latentdiff.config import load_config
    from latentdiff.images import make_grid, save_png_atomic
    from latentdiff.pipelines import TextToImagePipeline
    from latentdiff.train import lora as trainer

    overrides = {"device": args.device}
    if args.base:
        overrides["base"] = args.base
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.max_train_steps:
        overrides["optim.max_train_steps"] = args.max_train_steps
    cfg = load_config(args.config, trainer.LoraTrainConfig, overrides)
    results = {"config": str(Path(args.config).relative_to(ROOT) if Path(args.config).is_relative_to(ROOT)
                             else args.config), "base": cfg.base, "torch_threads": torch.get_num_threads()}

    lora_path = args.lora
    if lora_path is None:
        t0 = time.perf_counter()
        summary = trainer.train(cfg)
        results["train_wall_s"] = round(time.perf_counter() - t0, 1)
        results["train"] = {k: summary.get(k) for k in ("steps", "global_batch", "num_images", "final_loss",
                                                        "heldout_loss_initial", "heldout_loss_final",
                                                        "trainable_parameters", "lora_modules", "device")}
        lora_path = summary["lora"]
    results["lora"] = str(lora_path)

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    pipe = TextToImagePipeline.from_pretrained(cfg.base, device=device)
    names, targets, noto, groups = test_split(args.n, pipe.default_size)
    styled = [n + STYLE for n in names]
    seeds = list(range(len(names)))
    t0 = time.perf_counter()
    before = generate(pipe, styled, seeds, args.steps)
    plain = generate(pipe, names, seeds, args.steps) if args.evaluator else None
    pipe.load_lora(lora_path, adapter_name="symbola")
    after = generate(pipe, styled, seeds, args.steps)
    leak = generate(pipe, names, seeds, args.steps)
    results["eval_wall_s"] = round(time.perf_counter() - t0, 1)
    results["n"] = len(names)
    results["metrics"] = {
        "symbola_target (real)": saturation_stats(targets),
        "noto_base_style (real)": saturation_stats(noto) if noto else None,
        "before: base, styled prompt": saturation_stats(before),
        "after: base + LoRA, styled prompt": saturation_stats(after),
        "leak: base + LoRA, plain prompt": saturation_stats(leak),
    }
    results["sampling"] = {"sampler": pipe.defaults.sampler, "steps": args.steps or pipe.defaults.num_inference_steps,
                           "guidance_scale": pipe.defaults.guidance_scale}
    if args.evaluator:
        from latentdiff.evaluation import load_evaluator

        net, meta = load_evaluator(args.evaluator, device)
        sets = {"symbola_target (real)": targets, "noto_base_style (real)": noto if len(noto) == len(names) else None,
                "before: base, styled prompt": before, "after: base + LoRA, styled prompt": after,
                "leak: base + LoRA, plain prompt": leak, "base, plain prompt": plain}
        results["group_accuracy"] = {k: group_accuracy(net, meta["label_names"], v, groups)
                                     for k, v in sets.items() if v is not None}
        results["evaluator"] = str(args.evaluator)

    k = min(args.grid_n, len(names))
    grid = make_grid(targets[:k] + before[:k] + after[:k], cols=k)
    grid = grid.resize((grid.width * 2, grid.height * 2), resample=0)  # nearest: crisp 64 px emoji
    save_png_atomic(grid, args.grid)
    grid_path = Path(args.grid).resolve()
    results["grid"] = {"path": str(grid_path.relative_to(ROOT) if grid_path.is_relative_to(ROOT) else grid_path),
                       "rows": ["Symbola target", "base model", "base + LoRA"],
                       "prompts": styled[:k]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{len(names)} held-out emoji, prompt '<name>{STYLE}', same seeds before/after\n")
    print("| images | mean saturation | colourful pixels |\n|---|---|---|")
    for label, m in results["metrics"].items():
        if m:
            print(f"| {label} | {m['mean_saturation']:.3f} | {m['colourful_pixels']:.3f} |")
    if "group_accuracy" in results:
        print("\n| images | judged in the emoji's group |\n|---|---|")
        for label, v in results["group_accuracy"].items():
            print(f"| {label} | {100 * v:.1f}% |")
    if "train_wall_s" in results:
        print(f"\ntraining: {results['train']['steps']} steps in {results['train_wall_s']} s on {results['train']['device']}")
    print(f"evaluation: {results['eval_wall_s']} s; grid {args.grid}; numbers {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
