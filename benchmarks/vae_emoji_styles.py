"""Reconstruction PSNR of the shipped VAE on every embedded emoji style's test split (issue 14).

D(mu(x)) against x, per-image PSNR in dB averaged over the test split (as ``latentdiff train vae``
reports it); images in [-1, 1]. With ``--write-readmes`` the numbers go into each style's data
README (latentdiff/data/emoji_<style>/README.md) between the markers the build script keeps.

    python benchmarks/vae_emoji_styles.py --write-readmes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import AutoencoderKL  # noqa: E402

from latentdiff.data.build_emoji import DEFAULT_OUT, MEASURED_BEGIN, MEASURED_END, write_text_atomic  # noqa: E402
from train.common import DataConfig, load_image_data, psnr  # noqa: E402
from train.vae import reconstruct  # noqa: E402

STYLES = ("noto", "symbola", "twemoji", "openmoji", "fluent")
COMMAND = "python benchmarks/vae_emoji_styles.py --write-readmes"


def measure(vae_path: str, device: str) -> dict[str, dict[str, float]]:
    vae = AutoencoderKL.from_pretrained(vae_path).to(device).eval()
    out = {}
    for style in STYLES:
        data = load_image_data(DataConfig(source=f"emoji:{style}", max_validation_samples=0), "test", 64)
        with torch.no_grad():
            rec = reconstruct(vae, data.images, 64, device)
        p = psnr(rec, data.images.to(device).float() / 255.0).cpu()
        out[style] = {"n": len(p), "mean": float(p.mean()), "p10": float(p.quantile(0.1)), "min": float(p.min())}
        print(f"{style:9s} n={len(p):4d}  mean {p.mean():.2f} dB  p10 {p.quantile(0.1):.2f}  min {p.min():.2f}")
    return out


def section(style: str, results: dict[str, dict[str, float]]) -> str:
    rows = ["| style | test images | mean PSNR | 10th percentile | min |", "|---|---|---|---|---|"]
    for s, r in results.items():
        name = f"**{s}**" if s == style else s
        rows.append(f"| {name} | {r['n']} | {r['mean']:.2f} dB | {r['p10']:.2f} dB | {r['min']:.2f} dB |")
    return "\n".join([
        MEASURED_BEGIN,
        "## The shipped VAE on this style\n",
        "Reconstruction PSNR of `latentdiff/assets/emoji-model/vae` (trained on Noto only) on each style's test "
        "split: D(μ(x)) against x, per-image PSNR averaged (how `latentdiff train vae` reports its held-out "
        f"28.75 dB).  Command: `{COMMAND}` (CPU).\n",
        *rows,
        MEASURED_END,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default=str(ROOT / "latentdiff/assets/emoji-model/vae"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write-readmes", action="store_true", help="write the table into the Iconify styles' READMEs")
    args = ap.parse_args()
    results = measure(args.vae, args.device)
    if args.write_readmes:
        for style in ("twemoji", "openmoji", "fluent"):
            readme = DEFAULT_OUT[style] / "README.md"
            text = readme.read_text(encoding="utf-8")
            block = section(style, results)
            start, end = text.find(MEASURED_BEGIN), text.find(MEASURED_END)
            if 0 <= start < end:
                text = text[:start] + block + text[end + len(MEASURED_END):]
            else:  # before the Rebuild section, where the build script keeps it
                at = text.index("## Rebuild")
                text = text[:at] + block + "\n\n" + text[at:]
            write_text_atomic(readme, text)
            print(f"wrote {readme}")


if __name__ == "__main__":
    main()
