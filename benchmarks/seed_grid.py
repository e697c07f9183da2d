"""A grid of N seeds (rows) × prompts (columns) for one model: what the seed does.

    python benchmarks/seed_grid.py --model runs/emoji_unet_styles/final --out docs/images/emoji2_seeds.png
"""

from __future__ import annotations

import argparse
import sys

PROMPTS = ["red apple", "grinning face", "cat face", "heart", "flag", "person", "sun", "pizza",
           "blue apple", "green cat face", "red apple, openmoji style", "grinning face, twemoji style"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--prompts", default="|".join(PROMPTS), help="'|'-separated")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    import torch

    from latentdiff.evaluation import save_labelled_grid
    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(a.model)
    prompts = a.prompts.split("|")
    rows = []
    for s in range(a.seeds):
        out = pipe(prompts, seed=[s] * len(prompts), output_type="latent")
        rows.append(pipe.decode_latents(out.latents).float().cpu())
    save_labelled_grid(torch.cat(rows), prompts * a.seeds, a.out, cols=len(prompts))
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
