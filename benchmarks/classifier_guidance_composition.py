"""Classifier guidance composed with classifier-free guidance, at several CFG scales.

A caption of group A (text, CFG scale w) plus classifier guidance toward another group B (scale s):
how far does the judged result move from A to B as s grows, and how does that depend on w? The
parts (guiding classifier, clean judge on real pixels, seeded caption sample) are those of
`benchmarks/classifier_guidance.py`; this script runs only its composition section, for every w in
--cfg, with the model's sampler and steps unless given.

    python benchmarks/classifier_guidance_composition.py --classifier runs/cls-group \\
        --evaluator runs/evaluator-emoji --cfg 2,5 --threads 2

Writes JSON (--json) and a markdown table (--out) and prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("classifier_guidance", HERE / "classifier_guidance.py")
cg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cg)

logger = logging.getLogger("latentdiff.bench")


def composition(pipe, clf, net, names, captions, labels, *, a, b, n, scales, cfg, steps, sampler, batch_size,
                keep=0):
    """Judged shares/probabilities of A and B for each classifier scale, guidance toward B (and the
    first ``keep`` images per scale, for a grid)."""
    ka, kb = names.index(a), names.index(b)
    pool = [c for c, y in zip(captions, labels) if y == ka]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0)).tolist()
    prompts = [pool[i] for i in order[:n]]  # the same seeded sample as classifier_guidance.py
    rows, kept = {}, {}
    for s in scales:
        images = cg.generate(pipe, prompts, list(range(len(prompts))), classifier=clf, class_label=b, scale=s,
                             guidance_scale=cfg, batch_size=batch_size, steps=steps, sampler=sampler)
        kept[s] = images[:keep]
        probs = cg.judge_probs(net, images)
        pred = probs.argmax(-1)
        rows[str(s)] = {"share_a": float((pred == ka).float().mean()), "share_b": float((pred == kb).float().mean()),
                        "p_a": float(probs[:, ka].mean()), "p_b": float(probs[:, kb].mean())}
        logger.info("cfg %g, %s -> %s, s=%g: %s", cfg, a, b, s, rows[str(s)])
    return {"a": a, "b": b, "n": len(prompts), "rows": rows, "prompts": prompts[:keep], "images": kept}


def markdown(res: dict) -> str:
    pct = cg.pct
    lines = [f"Model `{res['model']}`, sampler {res['sampler']}, {res['steps']} steps, {res['n']} captions of group A "
             f"(seeds 0..{res['n'] - 1}), classifier guidance toward B; judge = the clean pixel classifier. "
             f"Device {res['device']} ({res['threads']} threads), {res['seconds']:.0f} s.", "",
             "```sh", res["command"], "```", "",
             "| CFG | prompt group A → target B | s | share A | share B | p(A) | p(B) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for w, comps in res["by_cfg"].items():
        for c in comps:
            for s, r in c["rows"].items():
                lines.append(f"| {float(w):g} | {c['a']} → {c['b']} | {float(s):g} | {pct(r['share_a'])} | "
                             f"{pct(r['share_b'])} | {r['p_a']:.3f} | {r['p_b']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--dataset", default="emoji")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--label-column", default="group")
    p.add_argument("--classifier", default=None, help="a trained guiding classifier (default: train one)")
    p.add_argument("--classifier-config", default="configs/emoji_classifier.yaml")
    p.add_argument("--classifier-steps", type=int, default=None)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--evaluator", default="runs/evaluator-emoji")
    p.add_argument("--work-dir", default="runs/bench-classifier-guidance")
    p.add_argument("--pairs", default=cg.PAIRS, help="'|'-separated 'A>B' pairs")
    p.add_argument("--n", type=int, default=32, help="captions per pair")
    p.add_argument("--scales", default="0,8,32,64", help="classifier scales")
    p.add_argument("--cfg", default=None, help="comma-separated CFG scales (default: the model's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default="docs/classifier_guidance_composition.json")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--grid", default="docs/images/classifier_guidance_composition.png",
                   help="grid of the last pair at the first CFG: rows = classifier scales, columns = captions")
    p.add_argument("--grid-n", type=int, default=8, help="captions (columns) in the grid")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    from latentdiff.config import atomic_write_text
    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(args.model, device=args.device)
    clf, _ = cg.guiding_classifier(args, args.device)
    names = list(clf.config.class_names)
    net, _, train_set, test_set = cg.clean_judge(args, args.device)
    if train_set.label_names["group"] != names:
        raise ValueError(f"the judge's groups {train_set.label_names['group']} differ from the classifier's {names}")
    captions = train_set.captions + test_set.captions
    labels = torch.cat([train_set.labels["group"], test_set.labels["group"]]).tolist()
    steps = args.steps or pipe.defaults.num_inference_steps
    sampler = args.sampler or pipe.defaults.sampler
    cfgs = [float(w) for w in args.cfg.split(",")] if args.cfg else [pipe.defaults.guidance_scale]
    scales = [float(s) for s in args.scales.split(",")]
    by_cfg = {}
    for w in cfgs:
        by_cfg[str(w)] = [composition(pipe, clf, net, names, captions, labels, a=a.strip(), b=b.strip(), n=args.n,
                                      scales=scales, cfg=w, steps=steps, sampler=sampler, batch_size=args.batch_size,
                                      keep=args.grid_n)
                          for a, b in (q.split(">") for q in args.pairs.split("|") if q)]
    if args.grid:
        from latentdiff.evaluation import save_labelled_grid

        c = by_cfg[str(cfgs[0])][-1]
        cells = torch.cat([c["images"][s] for s in scales])
        caps = [f"s={s:g} {p[:14]}" for s in scales for p in c["prompts"]]
        save_labelled_grid(cells, caps, args.grid, cols=len(c["prompts"]))
        from PIL import Image

        from latentdiff.images import save_png_atomic

        grid = Image.open(args.grid).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
        save_png_atomic(grid, args.grid, optimize=True)  # 256 colours: a third of the bytes
    for comps in by_cfg.values():
        for c in comps:
            c.pop("images")
    command = "python benchmarks/classifier_guidance_composition.py " + " ".join(
        f'"{a}"' if (" " in a or "&" in a) else a for a in (argv if argv is not None else sys.argv[1:]))
    res = {"model": args.model, "sampler": sampler, "steps": steps, "n": args.n, "scales": scales,
           "device": args.device, "threads": torch.get_num_threads(), "load": os.getloadavg()[0],
           "command": command.strip(), "by_cfg": by_cfg, "grid": args.grid, "seconds": time.perf_counter() - t0}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    if args.out:
        atomic_write_text(args.out, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
