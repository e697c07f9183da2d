"""Classifier guidance, measured: does steering toward a class with a noise-aware latent classifier
produce that class, where does quality break, does it compose with classifier-free guidance, and
what does it cost?

1. The *guiding* classifier: a noise-aware classifier p(group | x_t, t) trained on the model's
   VAE latents (`latentdiff train classifier`, configs/emoji_classifier.yaml), or --classifier DIR.
2. The *judge*: a separate clean classifier trained on real pixels (latentdiff.evaluation's
   EvaluatorNet, the one `latentdiff eval` uses; cached in --evaluator). It never sees noise or
   latents, so it cannot be fooled by adversarial latent gradients the guiding classifier likes.
3. Class-conditional sweep: prompt "" (no text, no CFG: the unconditional model), N images per target
   group and classifier scale s (same seeds for every s), share the judge assigns to the requested
   group, and the Fréchet distance in the judge's feature space to the real images of that group.
4. Composition with CFG: a text prompt from group A at the model's CFG scale plus classifier
   guidance toward group B: shares of A and B versus s.
5. Overhead: seconds per image and memory with and without guidance (CUDA peak memory; on any
   device, the bytes autograd keeps for the classifier's backward pass).

Writes a markdown report (--out, default docs/classifier_guidance.md), a grid and JSON. Run:

    python benchmarks/classifier_guidance.py --model emoji --device cuda --n 64
    python benchmarks/classifier_guidance.py --model emoji --n 16 --groups "Food & Drink,Flags"   # CPU, smaller
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("latentdiff.bench")
SCALES = "0,1,2,4,8,16,32"
COMPOSITION_SCALES = "0,8,32,64"
PAIRS = "Smileys & Emotion>Food & Drink|Animals & Nature>Travel & Places|Food & Drink>Flags"


# ---------------------------------------------------------------------------------------------- parts


def guiding_classifier(args, device: str):
    """Load --classifier, or train one on the model's latents into work_dir/cls-group (reused if there)."""
    from latentdiff.classifier import load_classifier

    if args.classifier:
        return load_classifier(args.classifier, device=device), Path(args.classifier)
    run = Path(args.work_dir) / f"cls-{args.label_column}"
    if not (run / "final" / "config.json").is_file() or args.retrain:
        from latentdiff.config import load_config
        from latentdiff.train.classifier import ClassifierTrainConfig, train

        overrides = {"vae_from": args.model, "output_dir": str(run), "device": "cuda" if device.startswith("cuda")
                     else "cpu", "data.source": args.dataset, "data.label_column": args.label_column}
        if args.classifier_steps:
            overrides["optim.max_train_steps"] = args.classifier_steps
        cfg = load_config(args.classifier_config, ClassifierTrainConfig, overrides)
        t0 = time.perf_counter()
        train(cfg, config_path=args.classifier_config)
        logger.info("guiding classifier trained in %.0f s", time.perf_counter() - t0)
    return load_classifier(run, device=device), run


def clean_judge(args, device: str):
    """The pixel-space evaluator of `latentdiff eval` (trained on real images once, cached)."""
    from latentdiff.evaluation import load_image_set
    from latentdiff.train.evaluator import get_evaluator

    cols = ["group", "subgroup"]  # the same label columns as `latentdiff eval`, so its cache is shared
    train_set = load_image_set(args.dataset, "train", args.resolution, cols)
    test_set = load_image_set(args.dataset, "test", args.resolution, cols)
    net, meta = get_evaluator(Path(args.evaluator), train_set, retrain=False, epochs=12, width=32, resolution=32,
                              seed=0, device=device, progress=True, dataset=args.dataset)
    return net, meta, train_set, test_set


@torch.no_grad()
def generate(pipe, prompts, seeds, *, classifier=None, class_label=None, scale=0.0, guidance_scale=1.0,
             batch_size=32, steps=None, sampler=None) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] on the CPU; image i from seed seeds[i]."""
    out = []
    for i in range(0, len(prompts), batch_size):
        kw = {}
        if classifier is not None and scale:
            kw = {"classifier": classifier, "class_label": class_label, "classifier_scale": scale}
        res = pipe(list(prompts[i:i + batch_size]), seed=list(seeds[i:i + batch_size]), guidance_scale=guidance_scale,
                   num_inference_steps=steps, sampler=sampler, output_type="latent", **kw)
        out.append(pipe.decode_latents(res.latents).float().cpu())
    return torch.cat(out)


def judge(net, images: torch.Tensor):
    from latentdiff.evaluation import evaluator_outputs

    preds, feats = evaluator_outputs(net, images)
    return preds["group"], feats


@torch.no_grad()
def judge_probs(net, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The judge's group probabilities (N, K): a finer measure of a shift than its argmax."""
    return torch.cat([net(images[i:i + batch_size])["group"].softmax(-1).cpu() for i in range(0, len(images), batch_size)])


def real_features(net, images: torch.Tensor) -> torch.Tensor:
    return judge(net, images)[1]


def save_grid(grid_images: dict, groups, scales, path: Path) -> None:
    """One row per requested group (seed 0), one column per classifier scale."""
    from PIL import Image

    from latentdiff.evaluation import save_labelled_grid
    from latentdiff.images import save_png_atomic

    cells = [grid_images[(g, s)] for g in groups for s in scales]
    caps = [f"{g} s={s:g}" for g in groups for s in scales]
    save_labelled_grid(torch.stack(cells), caps, path, cols=len(scales))
    # 256 colours: a quarter of the bytes, no visible change for emoji
    grid = Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    save_png_atomic(grid, path, optimize=True)


def saved_tensor_bytes(fn, exclude=()) -> int:
    """Bytes of the tensors autograd saves while ``fn`` runs (what a backward pass keeps alive),
    not counting tensors that share storage with ``exclude`` (the weights, which exist anyway)."""
    skip = {p.data_ptr() for p in exclude}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in skip:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def overhead(pipe, classifier, label, args, device: str) -> list[dict]:
    """Wall time per image and memory, without and with classifier guidance (CFG off and on)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for guidance_scale in (1.0, args.cfg):
        for guided in (False, True):
            prompts, seeds = [""] * args.overhead_batch, list(range(args.overhead_batch))

            def run(prompts=prompts, seeds=seeds, guided=guided, guidance_scale=guidance_scale):
                generate(pipe, prompts, seeds, classifier=classifier if guided else None, class_label=label,
                         scale=4.0, guidance_scale=guidance_scale, batch_size=args.overhead_batch,
                         steps=args.steps, sampler=args.sampler)

            run()  # warm-up
            sync()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.overhead_repeats):
                t0 = time.perf_counter()
                run()
                sync()
                times.append(time.perf_counter() - t0)
            row = {"cfg": guidance_scale, "classifier_guidance": guided, "batch": args.overhead_batch,
                   "s_per_image": min(times) / args.overhead_batch}
            if device.startswith("cuda"):
                row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            rows.append(row)
    # what autograd holds for one guided step's classifier backward (batch B)
    x = torch.randn(args.overhead_batch, classifier.config.latent_channels, classifier.config.sample_size,
                    classifier.config.sample_size, device=classifier.device)
    lp = classifier.log_prob_fn(label, args.overhead_batch)
    t = torch.full((args.overhead_batch,), 500, device=classifier.device)

    def one():
        with torch.enable_grad():
            lp(x.requires_grad_(True), t).sum()

    saved = saved_tensor_bytes(one, exclude=list(classifier.parameters()))
    rows.append({"autograd_saved_mb_per_step": saved / 2**20, "batch": args.overhead_batch})

    # one denoising step in isolation (best of 10): U-Net forward (B, and 2B for CFG) vs the guidance gradient
    def best(fn, n=10):
        fn()
        sync()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
        return min(out)

    b = args.overhead_batch
    emb = pipe.encode_prompt([""] * b)
    xu, tu = x.to(pipe.device, pipe.unet.dtype), t.to(pipe.device)
    with torch.no_grad():
        unet_b = best(lambda: pipe.unet(xu, tu, encoder_hidden_states=emb))
        unet_2b = best(lambda: pipe.unet(torch.cat([xu, xu]), torch.cat([tu, tu]),
                                         encoder_hidden_states=torch.cat([emb, emb])))

    def grad():
        with torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            torch.autograd.grad(lp(xi, t).sum(), xi)

    rows.append({"batch": b, "unet_step_ms": 1e3 * unet_b, "unet_cfg_step_ms": 1e3 * unet_2b,
                 "guidance_grad_ms": 1e3 * best(grad)})
    return rows


# ---------------------------------------------------------------------------------------------- report


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


USAGE = """# Classifier guidance

Steer generation toward a class with the gradient of a noise-aware classifier on the latents
(Dhariwal & Nichol 2021): ε̂ = ε_θ(x_t) − s·√(1−ᾱ_t)·∇_{x_t} log p_φ(y | x_t, t). The classifier
(`latentdiff.classifier.NoisyLatentClassifier`: timestep embedding, diffusers ResNet down blocks,
attention pooling) is trained on q_sample(z, t, ε) of the model's own VAE latents, so the gradient
never goes through the VAE decoder; it works with every sampler, alone or with classifier-free
guidance, with an empty prompt (pure class-conditional) or a text prompt.

```sh
# train p(group | x_t, t) on the emoji model's latents (3,000 steps: 39 min measured on one thread of a busy 2-core CPU)
latentdiff train classifier --config configs/emoji_classifier.yaml --vae-from emoji --output-dir runs/cls-group
#   -> runs/cls-group/final/: config.json, model.safetensors, accuracy_vs_t.{md,png,json}
# the subgroups instead of the groups
latentdiff train classifier --config configs/emoji_classifier.yaml --vae-from emoji --label-column subgroup \\
    --output-dir runs/cls-subgroup
# generate: class by name or index, any sampler, with or without a prompt
latentdiff generate "" --classifier runs/cls-group --class "Food & Drink" --classifier-scale 4 -n 8 --grid
latentdiff generate "grinning face" --classifier runs/cls-group --class 4 --classifier-scale 2 --sampler ddim
```

```python
from latentdiff.classifier import load_classifier, scale_schedule
from latentdiff.pipelines import TextToImagePipeline

pipe = TextToImagePipeline.from_pretrained("emoji")
clf = load_classifier("runs/cls-group")            # a folder or a Hub repo id
images = pipe("", classifier=clf, class_label="Food & Drink", classifier_scale=4, seed=0).images
# a schedule over the steps: strongest at high noise, fading to 0 at the end
images = pipe("", classifier=clf, class_label="Flags", classifier_scale=scale_schedule(8, "linear")).images
```

A classifier whose latent channels or size differ from the U-Net's, an unknown class name (the
error lists the valid ones) or an out-of-range index is a `ValueError` before sampling starts.
"""


def markdown(results: dict) -> str:
    r = results
    scales = r["scales"]
    lines = [
        USAGE,
        "## Measured on the emoji model",
        "",
        f"Model `{r['model']}`, sampler {r['sampler']} with {r['steps']} steps, device {r['device']} "
        f"({r['threads']} torch threads, load average {r['load']:.1f}); "
        f"{r['n']} images per group and scale (seeds 0..{r['n'] - 1}, the same for every scale). "
        f"Run time {r['seconds']:.0f} s ({', '.join(f'{k} {v:g} s' for k, v in r['timings_s'].items())}). "
        "Reproduce:",
        "",
        "```sh",
        "# the guiding classifier and the judge (the benchmark trains them itself when --classifier is not given",
        "# or the --evaluator folder is empty)",
        "latentdiff train classifier --config configs/emoji_classifier.yaml --vae-from emoji --output-dir runs/cls-group",
        "latentdiff eval --sections real --evaluator runs/evaluator-emoji",
        r["command"],
        "```",
        "",
        "### The guiding classifier: test accuracy versus noise level t",
        "",
        f"A noise-aware `NoisyLatentClassifier` on the model's VAE latents ({r['classifier']['parameters']:,} "
        f"parameters, {r['classifier']['num_classes']} groups), `{r['classifier']['folder']}`:",
        "",
        r["classifier"]["accuracy_table"],
        "",
        "![accuracy versus t](images/classifier_accuracy_vs_t.png)",
        "",
        "### The judge",
        "",
        f"A separate clean classifier trained on real pixels (`latentdiff.evaluation.EvaluatorNet`, `{r['judge']['folder']}`);"
        f" it scores **{pct(r['judge']['real_test_accuracy'])}** group accuracy on the real test images (the ceiling"
        " for the shares below). Fréchet distances are in its 128-d feature space.",
        "",
        "### Empty prompt: share of images the judge assigns to the requested group",
        "",
        "| classifier scale s | share (mean over groups) | FD to the group's real images (mean) |",
        "|---:|---:|---:|",
    ]
    for s in scales:
        row = r["sweep"][str(s)]
        lines.append(f"| {s:g} | {pct(row['share'])} | {row['fd_group']:.2f} |")
    lines += ["", f"Reference: FD between two random halves of each group's real images (mean) = "
                  f"{r['fd_real_halves']:.2f}. At s = 0 the share is each group's base rate under the "
                  "unconditional model.", "", "Per group:", "",
              "| requested group | " + " | ".join(f"s={s:g}" for s in scales) + " |",
              "|---|" + "---:|" * len(scales)]
    for g in r["groups"]:
        lines.append(f"| {g} | " + " | ".join(pct(r["sweep"][str(s)]["per_group"][g]) for s in scales) + " |")
    lines += ["", "![grid: rows are requested groups (seed 0), columns classifier scales](images/classifier_guidance_grid.png)",
              "", "### Composition with classifier-free guidance", "",
              f"Prompts: {r['composition_n']} captions of group A (a seeded sample), CFG scale {r['cfg_scale']:g}, "
              "plus classifier guidance toward another group B (the text and the classifier disagree) or toward A "
              "itself (they agree). Shares are the judge's argmax; p is its mean probability.", "",
              "| prompt group A | s | toward B: share A | share B | p(B) | toward A: share A | p(A) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for c in r["composition"]:
        for s in r["composition_scales"]:
            tb, ta = c["rows"][str(s)]["toward_b"], c["rows"][str(s)]["toward_a"]
            lines.append(f"| {c['a']} (B = {c['b']}) | {s:g} | {pct(tb['share_a'])} | {pct(tb['share_b'])} | "
                         f"{tb['p_b']:.3f} | {pct(ta['share_a'])} | {ta['p_a']:.3f} |")
    lines += ["", "### Overhead", "",
              "| CFG scale | classifier guidance (s=4) | batch | seconds per image | peak GPU memory (MB) |",
              "|---:|:---:|---:|---:|---:|"]
    for o in r["overhead"]:
        if "s_per_image" in o:
            mem = f"{o['peak_mem_mb']:.0f}" if "peak_mem_mb" in o else "–"
            lines.append(f"| {o['cfg']:g} | {'yes' if o['classifier_guidance'] else 'no'} | {o['batch']} | "
                         f"{o['s_per_image']:.4f} | {mem} |")
    step = [o for o in r["overhead"] if "unet_step_ms" in o][0]
    lines += ["", "One denoising step in isolation (best of 10):", "",
              "| batch | U-Net forward (ms) | U-Net forward with CFG, 2×batch (ms) | guidance gradient (ms) | "
              "added to a step without / with CFG |", "|---:|---:|---:|---:|---:|",
              f"| {step['batch']} | {step['unet_step_ms']:.1f} | {step['unet_cfg_step_ms']:.1f} | "
              f"{step['guidance_grad_ms']:.1f} | +{100 * step['guidance_grad_ms'] / step['unet_step_ms']:.0f}% / "
              f"+{100 * step['guidance_grad_ms'] / step['unet_cfg_step_ms']:.0f}% |"]
    saved = [o for o in r["overhead"] if "autograd_saved_mb_per_step" in o][0]
    lines += ["", f"Autograd keeps {saved['autograd_saved_mb_per_step']:.2f} MB of classifier activations per guided "
                  f"step at batch {saved['batch']} (the only extra memory: the gradient goes through the "
                  "classifier alone, not the U-Net or the VAE).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--dataset", default="emoji")
    p.add_argument("--resolution", type=int, default=64, help="resolution the real images are read at")
    p.add_argument("--label-column", default="group")
    p.add_argument("--classifier", default=None, help="a trained guiding classifier (default: train one)")
    p.add_argument("--classifier-config", default="configs/emoji_classifier.yaml")
    p.add_argument("--classifier-steps", type=int, default=None, help="override optim.max_train_steps")
    p.add_argument("--retrain", action="store_true", help="retrain the guiding classifier even if it exists")
    p.add_argument("--evaluator", default="runs/evaluator-emoji", help="the judge's folder (trained there if missing)")
    p.add_argument("--work-dir", default="runs/bench-classifier-guidance")
    p.add_argument("--groups", default=None, help="comma-separated target groups (default: all)")
    p.add_argument("--scales", default=SCALES)
    p.add_argument("--n", type=int, default=64, help="images per group and scale")
    p.add_argument("--pairs", default=PAIRS, help="'|'-separated 'A>B' pairs for the CFG composition")
    p.add_argument("--composition-n", type=int, default=32)
    p.add_argument("--composition-scales", default=COMPOSITION_SCALES)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale of the composition runs (default: the model's)")
    p.add_argument("--sampler", default=None, help="sampler (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--overhead-batch", type=int, default=16)
    p.add_argument("--overhead-repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default; 1 is fastest on a busy CPU)")
    p.add_argument("--out", default="docs/classifier_guidance.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)

    from latentdiff.classifier import count_parameters
    from latentdiff.evaluation import frechet_distance
    from latentdiff.pipelines import TextToImagePipeline

    device = args.device
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out_md = Path(args.out)
    img_dir = out_md.parent / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    tick = time.perf_counter()

    def lap(name):
        nonlocal tick
        now = time.perf_counter()
        timings[name] = round(now - tick, 1)
        tick = now

    pipe = TextToImagePipeline.from_pretrained(args.model, device=device)
    clf, clf_dir = guiding_classifier(args, device)
    lap("guiding_classifier")
    names = list(clf.config.class_names)
    net, meta, train_set, test_set = clean_judge(args, device)
    lap("judge")
    judge_names = train_set.label_names["group"]
    if judge_names != names:
        raise ValueError(f"the judge's groups {judge_names} differ from the guiding classifier's {names}")
    groups = [g.strip() for g in args.groups.split(",")] if args.groups else names
    for g in groups:
        clf.class_index(g)  # a clear error for an unknown group
    scales = [float(s) for s in args.scales.split(",")]
    comp_scales = [float(s) for s in args.composition_scales.split(",")]
    steps = args.steps or pipe.defaults.num_inference_steps
    args.cfg = pipe.defaults.guidance_scale if args.cfg is None else args.cfg
    sampler = args.sampler or pipe.defaults.sampler

    # ---- the judge on real images
    real_pred, _ = judge(net, test_set.images)
    real_acc = float((real_pred == test_set.labels["group"]).float().mean())
    all_real = torch.cat([train_set.images, test_set.images])
    all_real_y = torch.cat([train_set.labels["group"], test_set.labels["group"]])
    real_feats = real_features(net, all_real)
    g_cpu = torch.Generator().manual_seed(0)
    halves = []
    for g in groups:
        f = real_feats[all_real_y == names.index(g)]
        perm = torch.randperm(len(f), generator=g_cpu)
        halves.append(frechet_distance(f[perm[: len(f) // 2]], f[perm[len(f) // 2:]]))

    # ---- empty prompt sweep
    seeds = list(range(args.n))
    sweep, grid_images = {}, {}
    for s in scales:
        per_group, fds = {}, []
        for g in groups:
            images = generate(pipe, [""] * args.n, seeds, classifier=clf, class_label=g, scale=s,
                              batch_size=args.batch_size, steps=steps, sampler=sampler)
            pred, feats = judge(net, images)
            k = names.index(g)
            per_group[g] = float((pred == k).float().mean())
            fds.append(frechet_distance(feats, real_feats[all_real_y == k]))
            grid_images[(g, s)] = images[0]  # seed 0
            logger.info("s=%g toward %s: share %.3f", s, g, per_group[g])
        sweep[str(s)] = {"share": sum(per_group.values()) / len(groups), "per_group": per_group,
                         "fd_group": sum(fds) / len(fds)}
    save_grid(grid_images, groups, scales, img_dir / "classifier_guidance_grid.png")
    lap("empty_prompt_sweep")

    # ---- composition with CFG
    composition = []
    for pair in [q for q in args.pairs.split("|") if q]:
        a, b = (x.strip() for x in pair.split(">"))
        ka, kb = names.index(a), names.index(b)
        pool = [c for c, y in zip(train_set.captions + test_set.captions, all_real_y.tolist()) if y == ka]
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0)).tolist()
        prompts = [pool[i] for i in order[: args.composition_n]]  # a seeded sample of group A's captions
        rows = {}
        for s in comp_scales:
            row = {}
            for target, tag in ((b, "toward_b"), (a, "toward_a")):
                if tag == "toward_a" and s == 0:
                    row[tag] = row["toward_b"]  # s = 0 is the same unguided run
                    continue
                images = generate(pipe, prompts, list(range(len(prompts))), classifier=clf, class_label=target,
                                  scale=s, guidance_scale=args.cfg, batch_size=args.batch_size,
                                  steps=steps, sampler=sampler)
                probs = judge_probs(net, images)
                pred = probs.argmax(-1)
                row[tag] = {"share_a": float((pred == ka).float().mean()), "share_b": float((pred == kb).float().mean()),
                            "p_a": float(probs[:, ka].mean()), "p_b": float(probs[:, kb].mean())}
            rows[str(s)] = row
            logger.info("%s -> %s, s=%g: %s", a, b, s, row)
        composition.append({"a": a, "b": b, "n": len(prompts), "rows": rows})

    lap("cfg_composition")

    # ---- overhead
    over = overhead(pipe, clf, groups[0], args, device)
    lap("overhead")

    # ---- the guiding classifier's own report
    acc_md = clf_dir / "final" / "accuracy_vs_t.md" if (clf_dir / "final").is_dir() else clf_dir / "accuracy_vs_t.md"
    acc_png = acc_md.with_suffix(".png")
    table = "\n".join(acc_md.read_text().splitlines()[2:]) if acc_md.is_file() else "(no accuracy report found)"
    if acc_png.is_file():
        shutil.copy(acc_png, img_dir / "classifier_accuracy_vs_t.png")

    command = "python benchmarks/classifier_guidance.py " + " ".join(
        f'"{a}"' if (" " in a or "&" in a) else a for a in (argv if argv is not None else sys.argv[1:]))
    results = {"model": args.model, "device": device, "threads": torch.get_num_threads(), "load": os.getloadavg()[0], "sampler": sampler, "steps": steps, "n": args.n,
               "scales": scales, "groups": groups, "command": command.strip(),
               "classifier": {"folder": str(clf_dir), "parameters": count_parameters(clf),
                              "num_classes": clf.config.num_classes, "accuracy_table": table},
               "judge": {"folder": args.evaluator, "real_test_accuracy": real_acc,
                         **{k: v for k, v in meta.items() if k != "label_names"}},
               "fd_real_halves": sum(halves) / len(halves), "sweep": sweep, "composition": composition,
               "composition_n": args.composition_n, "composition_scales": comp_scales, "cfg_scale": args.cfg, "overhead": over,
               "seconds": time.perf_counter() - t_start, "timings_s": timings}
    from latentdiff.config import atomic_write_text

    atomic_write_text(work / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out_md, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
