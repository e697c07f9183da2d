"""The ``latentdiff`` command line: generate, train, eval, push.

Each subcommand's module owns its arguments (``main(argv)``); this file only dispatches, so
``latentdiff --help`` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

TRAINERS = {
    "vae": "latentdiff.train.vae",
    "unet": "latentdiff.train.unet",
    "clip": "latentdiff.train.clip",
    "lora": "latentdiff.train.lora",
    "classifier": "latentdiff.train.classifier",
}
PNG_KEY = "latentdiff"  # PNG tEXt chunk holding the generation parameters (JSON)

MAIN_HELP = """\
latentdiff: latent text-to-image diffusion.

commands:
  generate   generate images from a prompt (default: the built-in emoji model, offline)
  train      train a model: vae | unet | clip | lora | classifier
  eval       evaluate a model on a captioned, labelled dataset
  push       upload a pipeline, LoRA or classifier folder to the Hugging Face Hub

examples:
  latentdiff generate "red apple" --seed 0 --out outputs/
  latentdiff generate "blue heart" -n 8 --grid --sampler ddim --steps 50
  latentdiff train unet --config configs/emoji.yaml --output-dir runs/emoji
  latentdiff eval --model emoji
  latentdiff push runs/emoji/final user/emoji-model

Run `latentdiff COMMAND --help` for a command's options.
"""


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentdiff generate",
        description="Generate images from a text prompt. PNGs carry their generation parameters in a "
        f"'{PNG_KEY}' text chunk; `--from-png FILE` regenerates an image from them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  latentdiff generate "red apple"                          # built-in emoji model, outputs/
  latentdiff generate "red apple" -n 4 --seed 42 --grid --out apples/
  latentdiff generate "flag: France" --sampler ddim --steps 50 --eta 0.0 --guidance 7
  latentdiff generate "smiling face" --model path/to/diffusers-folder --height 64 --width 64
  latentdiff generate "cat face" --lora my_lora.safetensors:0.8
  latentdiff generate "" --classifier runs/cls --class "Food & Drink" --classifier-scale 4
  latentdiff generate --from-png outputs/red_apple-0.png   # regenerate exactly
""",
    )
    p.add_argument("prompt", nargs="?", help="the text prompt")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (replaces the empty prompt in CFG)")
    p.add_argument("--model", default="emoji", help="built-in name, diffusers folder or Hub repo id (default: emoji)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) for --model")
    p.add_argument("--sampler", default=None,
                   help="ddpm | ddim | dpmpp_1 | dpmpp_2m | euler | euler_a | heun | dpm2 | dpm2_a | lms | dpmpp_2s_a | "
                        "dpmpp_sde | dpmpp_2m_sde | dpmpp_3m_sde | unipc, or an A1111 name such as "
                        "\"DPM++ 2M Karras\" (default: the model's)")
    p.add_argument("--schedule", default=None,
                   help="sigma schedule: default | karras | exponential | polyexponential | sgm_uniform | simple | "
                        "beta | ays | sigmas:14.6,3.0,...,0 | timesteps:999,700,... (default: the model's)")
    p.add_argument("--noise-sampler", default=None, choices=["generator", "brownian"],
                   help="noise of stochastic samplers: per-image generator (default) or Brownian tree (torchsde)")
    p.add_argument("--steps", type=int, default=None, help="number of denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="CFG rescale factor φ (0 = off)")
    p.add_argument("--eta", type=float, default=None, help="DDIM η (0 = deterministic)")
    p.add_argument("--spacing", default=None, help="timestep spacing: leading | trailing | linspace | logsnr (default: the model's)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first image; image i uses seed+i (default: random)")
    p.add_argument("-n", "--num-images", type=int, default=1, help="number of images")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--out", default="outputs", help="output folder (default: outputs/)")
    p.add_argument("--grid", action="store_true", help="also save all images as one grid.png")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="LoRA file/folder/repo id with optional scale; repeatable")
    p.add_argument("--classifier", default=None, help="noise-aware latent classifier folder or repo id")
    p.add_argument("--class", dest="class_label", default=None, help="class name or index for --classifier")
    p.add_argument("--classifier-scale", type=float, default=1.0, help="classifier guidance scale s")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled (.bin/.ckpt) weights")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--from-png", default=None, help="regenerate from the parameters stored in a PNG we wrote")
    return p


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """"path:0.8" -> ("path", 0.8); "path" -> ("path", 1.0)."""
    head, sep, tail = spec.rpartition(":")
    if sep:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def _slug(text: str) -> str:
    s = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return (s or "image")[:60]


def generate(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    if args.from_png:
        from PIL import Image

        png = Path(args.from_png)
        if not png.is_file():
            raise FileNotFoundError(f"--from-png {png} not found")
        text = Image.open(png).text.get(PNG_KEY)
        if text is None:
            raise ValueError(f"{png} carries no '{PNG_KEY}' parameters (was it written by latentdiff generate?)")
        params = json.loads(text)
        args.prompt, args.negative_prompt = params["prompt"], params["negative_prompt"] or None
        args.model = params["model"] if args.model == "emoji" else args.model
        args.sampler, args.steps, args.guidance = params["sampler"], params["steps"], params["guidance_scale"]
        args.eta, args.seed, args.num_images = params["eta"], params["seed"], 1
        args.height, args.width, args.spacing = params["height"], params["width"], params["timestep_spacing"]
        args.lora = params.get("lora", [])
        schedule = params.get("sigma_schedule")
        args.schedule = "sigmas:" + ",".join(map(str, schedule)) if isinstance(schedule, list) else schedule
        args.noise_sampler = params.get("noise_sampler")
        args.guidance_rescale = params.get("guidance_rescale", 0.0)
        if params.get("classifier"):
            args.classifier, args.class_label = params["classifier"], params["class_label"]
            args.classifier_scale = params["classifier_scale"]
    if args.prompt is None:
        raise ValueError("a prompt is required (use \"\" for an unconditional image), or --from-png FILE")
    if args.num_images < 1:
        raise ValueError(f"-n/--num-images must be >= 1, got {args.num_images}")

    import torch

    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(args.model, revision=args.revision, allow_pickle=args.allow_pickle,
                                               device=args.device)
    for spec in args.lora:
        path, scale = parse_lora_spec(spec)
        pipe.load_lora(path, scale=scale)
    classifier = None
    if args.classifier:
        from latentdiff.classifier import load_classifier

        classifier = load_classifier(args.classifier)
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    out = pipe(args.prompt, args.negative_prompt, num_inference_steps=args.steps, sampler=args.sampler, eta=args.eta,
               guidance_scale=args.guidance, guidance_rescale=args.guidance_rescale, height=args.height,
               width=args.width, num_images_per_prompt=args.num_images, seed=seed,
               timestep_spacing=args.spacing, sigma_schedule=args.schedule, noise_sampler=args.noise_sampler,
               classifier=classifier, class_label=args.class_label, classifier_scale=args.classifier_scale,
               progress=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL.PngImagePlugin import PngInfo

    from latentdiff.images import make_grid, save_png_atomic

    for image, params in zip(out.images, out.parameters):
        params = {**params, "guidance_rescale": args.guidance_rescale, "lora": args.lora, "model": args.model,
                  "classifier": args.classifier, "class_label": args.class_label,
                  "classifier_scale": args.classifier_scale}
        info = PngInfo()
        info.add_text(PNG_KEY, json.dumps(params))
        info.add_text("parameters", f"{params['prompt']}\nNegative prompt: {params['negative_prompt']}\n"  # A1111's
                      f"Steps: {params['steps']}, Sampler: {params['a1111_sampler']}, CFG scale: "
                      f"{params['guidance_scale']}, Seed: {params['seed']}, Size: {params['width']}x{params['height']}")
        path = out_dir / f"{_slug(args.prompt)}-{params['seed']}.png"
        save_png_atomic(image, path, pnginfo=info)
        print(path)
    if args.grid:
        path = out_dir / "grid.png"
        save_png_atomic(make_grid(out.images), path)
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(MAIN_HELP)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "generate":
            return generate(rest)
        if cmd == "train":
            if not rest or rest[0] in ("-h", "--help"):
                print(f"usage: latentdiff train {{{','.join(TRAINERS)}}} [options]\n"
                      "  e.g. latentdiff train unet --config configs/emoji.yaml --output-dir runs/emoji\n"
                      "Run `latentdiff train KIND --help` for options.")
                return 0 if rest else 2
            if rest[0] not in TRAINERS:
                raise ValueError(f"Unknown trainer {rest[0]!r}; choose one of {', '.join(TRAINERS)}")
            return importlib.import_module(TRAINERS[rest[0]]).main(rest[1:]) or 0
        if cmd == "eval":
            return importlib.import_module("latentdiff.evaluation").main(rest) or 0
        if cmd == "push":
            return importlib.import_module("latentdiff.hub").push_main(rest) or 0
        raise ValueError(f"Unknown command {cmd!r}; choose one of generate, train, eval, push")
    except (ValueError, FileNotFoundError, PermissionError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
