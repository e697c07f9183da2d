"""How to ask the built-in model for a style: the plain suffix, the plain caption as negative prompt,
or the composable prompt that amplifies the suffix (issue 14), side by side in one process with one
judge, the same captions and seeds.

Variants (``--variants``, comma-separated):

* ``suffix``: "red apple, twemoji style" (what the models are trained on);
* ``negative``: the same, negative prompt "red apple" (guidance along the suffix only);
* ``andA``: "red apple, twemoji style :1+A AND red apple :-A" (ordinary guidance plus A times the
  guidance along the suffix; :func:`latentdiff.emoji_eval.style_prompt`).

The judge is an evaluator with ``group`` and ``style`` heads trained on every style's real images
(``latentdiff eval --dataset emoji:all --label-columns group,subgroup,style --sections real
--evaluator runs/evaluator-emoji-all --evaluator-epochs 4 --train-evaluator``), so each variant's
style share comes with its group accuracy: what the trick costs the content.

    python benchmarks/style_guidance.py --variants suffix,negative,and0.5,and1 --out docs/style_guidance.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentdiff import emoji_eval  # noqa: E402
from latentdiff.config import atomic_write_text  # noqa: E402
from latentdiff.evaluation import EVALUATOR_META, align_labels, load_evaluator, load_image_set  # noqa: E402


def parse_variant(name: str) -> dict:
    if name == "suffix":
        return {"negative": "none", "amplify": 0.0}
    if name == "negative":
        return {"negative": "plain", "amplify": 0.0}
    if name.startswith("and"):
        try:
            return {"negative": "none", "amplify": float(name[3:])}
        except ValueError:
            pass
    raise SystemExit(f"--variants: unknown variant {name!r}; use suffix, negative or andA (e.g. and1)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--evaluator", default="runs/evaluator-emoji-all", help="evaluator with group and style heads")
    p.add_argument("--variants", default="suffix,negative,and1")
    p.add_argument("--limit", type=int, default=64, help="test captions per variant (default: 64)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    variants = {v.strip(): parse_variant(v.strip()) for v in args.variants.split(",") if v.strip()}
    if not Path(args.evaluator, EVALUATOR_META).is_file():
        raise SystemExit(f"--evaluator {args.evaluator}: not found; train it with the command in this script's --help")
    net, meta = load_evaluator(args.evaluator)
    if not {"group", "style"} <= set(net.heads):
        raise SystemExit(f"--evaluator {args.evaluator}: needs group and style heads, has {sorted(net.heads)}")
    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(args.model)
    test = align_labels(load_image_set("emoji:all", "test", 64, list(meta["label_names"])), meta["label_names"])
    captions, groups = test.captions[:args.limit], test.labels["group"][:args.limit]
    results = {"model": args.model, "evaluator": args.evaluator, "guidance": args.guidance, "n": len(captions),
               "command": "python benchmarks/style_guidance.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "variants": {}}
    for name, kw in variants.items():
        t0 = time.perf_counter()
        r = emoji_eval.style_report(pipe, net, test, captions, groups=groups, guidance_scale=args.guidance,
                                    progress=False, **kw)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results["variants"][name] = r
        print(f"{name:9s} style {100 * r['suffixed_mean']:.1f}%  group {100 * r['suffixed_group_accuracy_mean']:.1f}%  "
              + "  ".join(f"{s} {100 * v['judged_as_asked']:.0f}/{100 * v['group_accuracy']:.0f}"
                          for s, v in r["suffixed"].items()) + f"  ({r['seconds']} s)", flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
