"""Image-to-image, inpainting and hires fix measured on the shipped emoji model (issue 16).

    python benchmarks/img2img_emoji.py --out docs/img2img_emoji.json --grid-dir docs/images

1. Recolour: a real Noto emoji ("red apple", ...) -> the same object in another colour, at strengths
   0.4-0.8, 8 seeds each: the share judged the asked colour by the dominant-colour check of
   ``latentdiff eval``, and the silhouette IoU with the input (non-background pixels).
2. Inpaint the left half of 32 test emoji with their own captions: the error of the unmasked half
   (with and without paste-back) and the evaluator's group accuracy of the result, beside the real
   images and plain text-to-image of the same captions.
3. Hires fix 64 -> 128 px beside a plain 128-px generation (grid).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RECOLOUR = [("red apple", "blue apple"), ("red heart", "green heart"), ("blue book", "red book"),
            ("yellow heart", "purple heart")]
STRENGTHS = [0.4, 0.5, 0.6, 0.7, 0.8]


def foreground(images: torch.Tensor) -> torch.Tensor:
    from latentdiff.emoji_checks import background_mask

    return ~background_mask(images)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--inpaint", type=int, default=32, help="test emoji to inpaint")
    p.add_argument("--evaluator", default="runs/evaluator-emoji", help="cached evaluator folder (trained if missing)")
    p.add_argument("--out", default="docs/img2img_emoji.json")
    p.add_argument("--grid-dir", default="docs/images")
    p.add_argument("--sections", default="recolour,inpaint,hires", help="which parts to run")
    args = p.parse_args()
    sections = set(args.sections.split(","))

    from latentdiff.emoji_checks import colour_check
    from latentdiff.evaluation import load_image_set, save_labelled_grid
    from latentdiff.pipelines import TextToImagePipeline

    t0 = time.perf_counter()
    torch.set_num_threads(2)
    pipe = TextToImagePipeline.from_pretrained(args.model)
    res = 64
    train = load_image_set("emoji", "train", res, ["group", "subgroup"])
    test = load_image_set("emoji", "test", res, ["group", "subgroup"])
    by_caption = {c: i for i, c in enumerate(train.captions)} | {c: -1 - i for i, c in enumerate(test.captions)}

    def real(caption: str) -> torch.Tensor:
        i = by_caption[caption]
        return train.images[i] if i >= 0 else test.images[-1 - i]

    out: dict = {"model": args.model, "sampler": pipe.defaults.sampler, "steps": pipe.defaults.num_inference_steps,
                 "guidance": pipe.defaults.guidance_scale, "seeds": args.seeds}

    # 1. recolour
    rows, grid, grid_caps = [], [], []
    if "recolour" not in sections:
        RECOLOUR.clear()
    for src, dst in RECOLOUR:
        init = real(src)
        init_fg = foreground(init[None])[0]
        pil = (init.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        grid.append(init)
        grid_caps.append(f"input: {src}")
        for s in STRENGTHS:
            o = pipe([dst] * args.seeds, image=pil, strength=s, seed=0, output_type="np")
            ims = torch.from_numpy(o.images).permute(0, 3, 1, 2)
            check = colour_check(ims, [dst] * args.seeds)
            ious = [iou(init_fg, f) for f in foreground(ims)]
            rows.append({"from": src, "to": dst, "strength": s, "colour_obeyed": check["rate"],
                         "silhouette_iou": float(np.mean(ious))})
            grid.append(ims[0])
            grid_caps.append(f"{dst} s={s}")
    out["recolour"] = rows
    out["recolour_by_strength"] = {} if not rows else {
        str(s): {"colour_obeyed": float(np.mean([r["colour_obeyed"] for r in rows if r["strength"] == s])),
                 "silhouette_iou": float(np.mean([r["silhouette_iou"] for r in rows if r["strength"] == s]))}
        for s in STRENGTHS}
    Path(args.grid_dir).mkdir(parents=True, exist_ok=True)
    if grid:
        save_labelled_grid(torch.stack(grid), grid_caps, Path(args.grid_dir) / "img2img_recolour.png",
                           cols=len(STRENGTHS) + 1)

    # 2. inpaint the left half of test emoji with their own captions
    if "inpaint" in sections:
        inpaint(args, pipe, train, test, res, out)

    # 3. hires fix 64 -> 128 beside plain 128 px: the 64-px image upscaled, hires at 0.3 and 0.5
    if "hires" in sections:
        prompts = ["red apple", "grinning face", "flag: France", "dog face"]
        base = torch.from_numpy(pipe(prompts, seed=0, output_type="np").images).permute(0, 3, 1, 2)
        rows = [torch.nn.functional.interpolate(base, scale_factor=2, mode="bicubic").clamp(0, 1)]
        caps = [f"64 px, upscaled: {p}" for p in prompts]
        for s in (0.3, 0.5):
            rows.append(torch.from_numpy(pipe(prompts, seed=0, hires_scale=2.0, hires_strength=s,
                                              output_type="np").images).permute(0, 3, 1, 2))
            caps += [f"hires fix {s}: {p}" for p in prompts]
        rows.append(torch.from_numpy(pipe(prompts, seed=0, height=128, width=128,
                                          output_type="np").images).permute(0, 3, 1, 2))
        caps += [f"plain 128 px: {p}" for p in prompts]
        save_labelled_grid(torch.cat(rows), caps, Path(args.grid_dir) / "hires_fix.png", cols=len(prompts))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    Path(args.out).write_text(json.dumps({**old, **{k: v for k, v in out.items() if v not in ([], {})}}, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "recolour"}, indent=2))


def inpaint(args, pipe, train, test, res, out) -> None:
    from latentdiff.eval_cli import build_parser
    from latentdiff.evaluation import (
        accuracy,
        evaluator_outputs,
        save_labelled_grid,
    )
    from latentdiff.train.evaluator import get_evaluator

    defaults = build_parser().parse_args([])
    net, _ = get_evaluator(Path(args.evaluator), train, retrain=False, epochs=defaults.evaluator_epochs,
                           width=defaults.evaluator_width, resolution=defaults.evaluator_resolution, seed=0,
                           device="cpu", progress=False, dataset="emoji")
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.inpaint]
    sub = test.subset(idx.tolist())
    mask = np.zeros((res, res), np.uint8)
    mask[:, : res // 2] = 255
    results = {"plain": [], "keep_unmasked": []}
    for i, (im, cap) in enumerate(zip(sub.images, sub.captions)):
        pil = (im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        for kind in results:
            o = pipe(cap, image=pil, mask_image=mask, keep_unmasked=kind == "keep_unmasked", seed=i, output_type="np")
            results[kind].append(torch.from_numpy(o.images[0]).permute(2, 0, 1))
    txt = torch.cat([torch.from_numpy(pipe(sub.captions[i:i + 16], seed=list(range(i, i + len(sub.captions[i:i + 16]))),
                                           output_type="np").images).permute(0, 3, 1, 2)
                     for i in range(0, len(sub), 16)])
    real_pred, _ = evaluator_outputs(net, sub.images)
    txt_pred, _ = evaluator_outputs(net, txt)
    out["inpaint_left_half"] = {"n": len(sub), "real_group_accuracy": accuracy(real_pred, sub.labels)["group"],
                                "txt2img_group_accuracy": accuracy(txt_pred, sub.labels)["group"]}
    for kind, ims in results.items():
        ims = torch.stack(ims)
        pred, _ = evaluator_outputs(net, ims)
        kept = (ims[..., res // 2:] - sub.images[..., res // 2:]).abs()
        out["inpaint_left_half"][kind] = {"group_accuracy": accuracy(pred, sub.labels)["group"],
                                          "unmasked_mean_abs_error": float(kept.mean()),
                                          "unmasked_max_abs_error": float(kept.max())}
    show = list(range(8))
    save_labelled_grid(torch.cat([sub.images[show], torch.stack(results["keep_unmasked"])[show]]),
                       [f"real: {sub.captions[i]}" for i in show] + ["inpainted left half"] * len(show),
                       Path(args.grid_dir) / "inpaint_left_half.png", cols=8)



if __name__ == "__main__":
    main()
