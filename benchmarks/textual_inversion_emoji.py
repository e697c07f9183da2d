"""Textual inversion measured on the built-in emoji model: does the learned token draw its concept?

A token is taught from a few held-out emoji of one subgroup (`latentdiff train embedding`), then
"<token>" is generated for N seeds with the token's initial vector (before) and its learned vector
(after); the evaluator (`latentdiff eval`'s pixel CNN, trained on the real train split) says which
subgroup and group each image shows. The share judged as the taught subgroup is the score; the same
judge on the real training images is its ceiling.

    python benchmarks/textual_inversion_emoji.py --run runs/ti_flags --token "<flg>" --subgroup country-flag \\
        --images /tmp/ti/flags --evaluator runs/evaluator-emoji --out docs/textual_inversion_emoji.json \\
        --grid docs/images/textual_inversion_emoji.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def judge(net, meta, images: torch.Tensor, subgroup: str, group: str) -> dict:
    from latentdiff.evaluation import evaluator_outputs

    preds, _ = evaluator_outputs(net, images)
    names = meta["label_names"]
    sub = [names["subgroup"][i] for i in preds["subgroup"].tolist()]
    grp = [names["group"][i] for i in preds["group"].tolist()]
    return {"n": len(sub), "subgroup_share": sum(s == subgroup for s in sub) / len(sub),
            "group_share": sum(g == group for g in grp) / len(grp),
            "subgroups": {k: sub.count(k) for k in sorted(set(sub))}}


def pad(images: torch.Tensor, n: int) -> torch.Tensor:
    """``images`` and white tiles up to ``n`` (one grid row per set)."""
    return torch.cat([images, torch.ones(n - len(images), *images.shape[1:])]) if len(images) < n else images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="output_dir of `latentdiff train embedding`")
    p.add_argument("--token", required=True)
    p.add_argument("--subgroup", required=True, help="the taught emoji subgroup (the evaluator's label)")
    p.add_argument("--group", default="", help="its group (default: read from the data)")
    p.add_argument("--images", required=True, help="the training images (the judge's ceiling)")
    p.add_argument("--evaluator", required=True)
    p.add_argument("--base", default="emoji")
    p.add_argument("-n", type=int, default=16, help="seeds per prompt")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--grid", default="")
    a = p.parse_args(argv)

    from latentdiff.evaluation import generate, load_evaluator
    from latentdiff.images import make_grid, save_png_atomic
    from latentdiff.pipelines import TextToImagePipeline

    torch.manual_seed(0)
    net, meta = load_evaluator(a.evaluator)
    run = Path(a.run)
    summary = json.loads((run / "final" / "training_summary.json").read_text())
    group = a.group or "Flags"
    files = sorted(Path(a.images).glob("*.png"))
    real = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB").resize((64, 64)), dtype=np.float32)
                                      for f in files])).permute(0, 3, 1, 2) / 255.0
    results = {"token": a.token, "subgroup": a.subgroup, "group": group, "n": a.n,
               "training_wall_time_s": summary["wall_time_s"], "training_steps": summary["steps"],
               "training_images": len(files), "real_training_images": judge(net, meta, real, a.subgroup, group),
               "command": " ".join(["python"] + sys.argv)}
    grids = []
    learned = run / "final" / "learned_embeds.safetensors"
    for label in ("before", "after"):
        pipe = TextToImagePipeline.from_pretrained(a.base)
        if label == "before":  # the token with the vector training started from
            from safetensors.torch import load_file, save_file

            n = load_file(str(learned))[a.token].shape[0]
            table = pipe.text_encoder.get_input_embeddings().weight.detach()
            if summary.get("init_word"):  # as train/embedding.add_tokens starts them
                ids = pipe.tokenizer(summary["init_word"], add_special_tokens=False).input_ids
                init = table[[ids[i % len(ids)] for i in range(n)]].clone()
            else:
                init = table.mean(0, keepdim=True).repeat(n, 1)
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp) / "init.safetensors"
                save_file({a.token: init.contiguous()}, str(f))
                pipe.load_textual_inversion(f, token=a.token)
        else:
            pipe.load_textual_inversion(learned, token=a.token)
        images, _ = generate(pipe, [a.token] * a.n, seed=0, steps=a.steps, guidance_scale=a.guidance_scale,
                             progress=False)
        results[label] = judge(net, meta, images, a.subgroup, group)
        grids.append(images[:8])
        print(label, json.dumps(results[label]))
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    if a.grid:
        tiles = [Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
                 for t in torch.cat([pad(real[:8].clamp(0, 1), 8), *grids])]
        save_png_atomic(make_grid(tiles, cols=8), a.grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
