"""The ``latentdiff`` command line: generate, train, eval, push.

Each subcommand's module owns its arguments (``main(argv)``); this file only dispatches, so
``latentdiff --help`` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
from pathlib import Path

from latentdiff.errors import run_cli

TRAINERS = {
    "vae": "latentdiff.train.vae",
    "unet": "latentdiff.train.unet",
    "clip": "latentdiff.train.clip",
    "lora": "latentdiff.train.lora",
    "embedding": "latentdiff.train.embedding",
    "lcm": "latentdiff.train.lcm",
    "classifier": "latentdiff.train.classifier",
}
PNG_KEY = "latentdiff"  # PNG tEXt chunk holding the generation parameters (JSON)

MAIN_HELP = """\
latentdiff: latent text-to-image diffusion.

commands:
  generate   generate images from a prompt (default: the built-in emoji model, offline)
  train      train a model: vae | unet | clip | lora | embedding | lcm | classifier (one loop, train/loop.py)
  eval       evaluate a model on a captioned, labelled dataset
  push       upload a pipeline, LoRA or classifier folder to the Hugging Face Hub
  serve      A1111-compatible HTTP API (/sdapi/v1) and web UI (needs the 'serve' extra)

examples:
  latentdiff generate "red apple" --seed 0 --out outputs/
  latentdiff generate "blue heart" -n 8 --grid --sampler ddim --steps 50
  latentdiff train unet --config configs/emoji_unet.yaml --output-dir runs/emoji_unet
  latentdiff train embedding --base emoji --data my_images/ --token "<my-emoji>"
  latentdiff train lcm --config configs/emoji_lcm.yaml        # then: generate ... --sampler lcm --steps 4
  latentdiff eval --model emoji
  latentdiff push runs/emoji_unet/final user/emoji-model
  latentdiff serve --lora-dir loras/ --outputs outputs/

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
  latentdiff generate "blue apple" --image red_apple.png --strength 0.6   # image-to-image
  latentdiff generate "cat face" --image in.png --mask mask.png --mask-blur 4 --keep-unmasked
  latentdiff generate "red apple" --image in.png --outpaint 16,16,0,0     # extend the canvas
  latentdiff generate "red apple" --hires 2 --hires-strength 0.5          # 64 px -> 128 px
  latentdiff generate "a (blue:1.3) apple, [shiny] BREAK white background"   # A1111 weights
  latentdiff generate "[red:blue:0.5] heart" --steps 20                      # prompt editing
  latentdiff generate "red apple, twemoji style :2 AND red apple :-1"        # AND: amplify the style
  latentdiff generate "a cat <lora:symbola:0.8>" --lora-dir loras/           # LoRA tag
  latentdiff generate "a <sks> emoji" --embedding sks.safetensors:<sks>      # textual inversion
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
    p.add_argument("--classifier-scale", type=float, default=None,
                   help="classifier guidance scale s (default: 1 with --classifier)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled (.bin/.ckpt) weights")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (large images in less memory)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net and VAE decoder first (minutes the first time, seconds with "
                        "Inductor's cache warm): worth it for many images (-n 64), not for one")
    p.add_argument("--no-memory-check", action="store_true",
                   help="skip the estimate that refuses images too large for this machine's memory")
    p.add_argument("--from-png", default=None,
                   help="regenerate from the parameters stored in a PNG we wrote; options given on the command "
                        "line win over the PNG's")
    p.add_argument("--lora-dir", default=None, help="folder where <lora:name:weight> prompt tags are looked up")
    p.add_argument("--embedding", action="append", default=[], metavar="PATH[:TOKEN]",
                   help="textual-inversion embedding (diffusers/A1111/ComfyUI .safetensors), optional token; repeatable")
    p.add_argument("--prompt-normalization", choices=["a1111", "comfy", "none", "compel"], default=None,
                   help="how (word:1.3) weights apply (default: a1111); compel = compel's own syntax")
    g = p.add_argument_group("image-to-image, inpainting, outpainting, hires fix")
    g.add_argument("--image", default=None, help="start from this image (image-to-image; SDEdit)")
    g.add_argument("--strength", type=float, default=None,
                   help="how much to change --image, 0..1 (default 0.8; 1.0 with --mask)")
    g.add_argument("--strength-steps", choices=["diffusers", "exact"], default="diffusers",
                   help="diffusers: int(steps x strength) steps; exact: exactly --steps steps (ComfyUI's denoise)")
    g.add_argument("--mask", default=None, help="inpainting mask for --image: white = repaint, black = keep")
    g.add_argument("--mask-blur", type=float, default=0.0, help="blur the mask's edge by this many px")
    g.add_argument("--keep-unmasked", action="store_true", help="paste the input back where the mask is black")
    g.add_argument("--only-masked", action="store_true",
                   help="inpaint only the mask's bounding box (plus --padding) at the full working size")
    g.add_argument("--padding", type=int, default=32, help="padding in px around the mask for --only-masked")
    g.add_argument("--outpaint", default=None, metavar="L,R,T,B",
                   help="extend --image by these many px left,right,top,bottom and paint the new area")
    g.add_argument("--hires", type=float, default=None, metavar="SCALE",
                   help="hires fix: generate, upscale by SCALE, then image-to-image at --hires-strength")
    g.add_argument("--hires-strength", type=float, default=0.5, help="denoising strength of the hires pass")
    g.add_argument("--hires-upscaler", default="latent-bilinear",
                   help="latent-bilinear | latent-bicubic | latent-nearest | lanczos")
    g.add_argument("--hires-steps", type=int, default=None, help="steps of the hires pass (default: --steps)")

    return p


def _parse_outpaint(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"--outpaint {text!r}: expected four integers L,R,T,B (pixels), e.g. --outpaint 16,16,0,0")
    return values


def _check_input_file(kind: str, recorded: dict, given: str | None) -> str | None:
    """For --from-png: the init image/mask must be the same file content the PNG was made from."""
    from latentdiff.fs import file_sha256

    digest = recorded.get(f"{kind}_sha256")
    if digest is None:
        return given
    path = given or recorded.get(kind)
    flag = "--image" if kind == "image" else "--mask"
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"this PNG was made from {kind} {recorded.get(kind)!r} (sha256 {digest[:12]}...), "
                                f"which is not there: pass it again with {flag} PATH")
    if file_sha256(path) != digest:
        raise ValueError(f"{flag} {path} is not the {kind} this PNG was made from (sha256 differs); pass the "
                         "original file")
    return path


# --from-png: PNG parameter -> argparse destination (the PNG's value fills what the command line left unset)
PNG_PARAMS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "model": "model", "sampler": "sampler",
              "steps": "steps", "guidance_scale": "guidance", "eta": "eta", "seed": "seed", "height": "height",
              "width": "width", "timestep_spacing": "spacing", "lora": "lora", "guidance_rescale": "guidance_rescale",
              "classifier": "classifier", "class_label": "class_label", "classifier_scale": "classifier_scale",
              "strength": "strength", "strength_steps": "strength_steps", "mask_blur": "mask_blur",
              "keep_unmasked": "keep_unmasked", "only_masked": "only_masked", "only_masked_padding": "padding",
              "outpaint": "outpaint", "hires_scale": "hires", "hires_strength": "hires_strength",
              "hires_upscaler": "hires_upscaler", "hires_steps": "hires_steps", "embeddings": "embedding",
              "lora_dir": "lora_dir", "prompt_normalization": "prompt_normalization",
              "sigma_schedule": "schedule", "noise_sampler": "noise_sampler"}
PNG_REQUIRED = ("prompt", "seed", "sampler", "steps", "guidance_scale", "height", "width")


def explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations the user actually gave on the command line (defaults suppressed)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def read_png_parameters(png: Path) -> dict:
    """The generation parameters we stored in ``png``; every failure names the file."""
    from PIL import Image, UnidentifiedImageError

    if not png.is_file():
        raise FileNotFoundError(f"--from-png {png} not found")
    try:
        with Image.open(png) as im:
            im.load()  # reads all chunks: a truncated file fails here, not later
            text, a1111_text = im.text.get(PNG_KEY), im.text.get("parameters")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"--from-png {png} is not a readable PNG ({' '.join(str(e).split())}); pass a PNG "
                         "written by latentdiff generate") from None
    if text is None and a1111_text is not None:  # an A1111 PNG: its infotext (settings carry over, not pixels)
        from latentdiff.a1111 import params_from_infotext

        return params_from_infotext(a1111_text)
    if text is None:
        raise ValueError(f"{png} carries no '{PNG_KEY}' parameters (was it written by latentdiff generate?)")
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{png}: its '{PNG_KEY}' parameters are not valid JSON ({e}); the file was edited or "
                         "damaged") from None
    if not isinstance(params, dict):
        raise ValueError(f"{png}: its '{PNG_KEY}' parameters are a {type(params).__name__}, not an object")
    missing = [k for k in PNG_REQUIRED if k not in params]
    if missing:
        raise ValueError(f"{png}: its '{PNG_KEY}' parameters lack {', '.join(missing)}; pass them on the command line "
                         "or use a PNG written by latentdiff generate")
    return params


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


def unique_path(folder: Path, stem: str) -> Path:
    """``folder/stem.png`` if free, else ``stem-1.png``, ``stem-2.png``, …: never an existing file."""
    path, k = folder / f"{stem}.png", 0
    while path.exists():
        k += 1
        path = folder / f"{stem}-{k}.png"
    return path


def save_new_png(image, folder: Path, stem: str, **save_kwargs) -> Path:
    """Save under the first free name of :func:`unique_path`, without ever replacing a file (also
    when another process takes the same name at the same moment)."""
    from latentdiff.images import save_png_atomic

    while True:
        path = unique_path(folder, stem)
        try:
            save_png_atomic(image, path, exclusive=True, **save_kwargs)
            return path
        except FileExistsError:
            continue  # taken between the check and the write: the next free name


def generate(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    if args.from_png:
        png = Path(args.from_png)
        params = read_png_parameters(png)
        given = explicit_options(generate_parser(), argv)
        for key, dest in PNG_PARAMS.items():
            if key.startswith("class") and not params.get("classifier"):
                continue  # older PNGs stored classifier_scale=1.0 even without a classifier
            if dest not in given and key in params:
                setattr(args, dest, params[key])
        if "num_images" not in given:
            args.num_images = 1
        args.negative_prompt = args.negative_prompt or None
        args.image = _check_input_file("image", params, args.image)
        args.mask = _check_input_file("mask", params, args.mask)
        if isinstance(args.schedule, list):  # a user list of sigmas
            args.schedule = "sigmas:" + ",".join(map(str, args.schedule))
        if isinstance(args.outpaint, list):
            args.outpaint = ",".join(str(v) for v in args.outpaint)
        if params.get("hires_scale") is not None:  # the recorded height/width are the hires output
            for key, dest in (("base_height", "height"), ("base_width", "width")):
                if dest not in given:
                    setattr(args, dest, params[key])
    if args.prompt is None:
        raise ValueError("a prompt is required (use \"\" for an unconditional image), or --from-png FILE")
    if args.num_images < 1:
        raise ValueError(f"-n/--num-images must be >= 1, got {args.num_images}")
    if args.classifier is None and (args.class_label is not None or args.classifier_scale is not None):
        raise ValueError("--class and --classifier-scale need --classifier DIR (a noise-aware classifier); "
                         "without it they would be ignored")
    if args.classifier is not None and args.class_label is None:
        raise ValueError("--classifier needs --class NAME (or index): the class to guide towards")
    loras = []
    for spec in args.lora:
        path, scale = parse_lora_spec(spec)
        if not math.isfinite(scale):
            raise ValueError(f"--lora {spec}: the scale must be a finite number, got {scale}")
        loras.append((path, scale))
    from latentdiff.io import check_writable_dir, is_repo_id

    if args.revision and not is_repo_id(str(args.model)):
        raise ValueError(f"--revision {args.revision} applies to Hub repo ids only; --model {args.model} is not one")
    out_dir = check_writable_dir(args.out, "--out")  # before minutes of sampling, not after

    import torch

    from latentdiff.io import resolve_device
    from latentdiff.pipelines import TextToImagePipeline

    resolve_device(args.device)
    pipe = TextToImagePipeline.from_pretrained(args.model, revision=args.revision, allow_pickle=args.allow_pickle,
                                               device=args.device)
    for path, scale in loras:
        pipe.load_lora(path, scale=scale)
    for spec in args.embedding:
        path, sep, token = spec.rpartition(":") if ":" in Path(spec).name else (spec, "", "")
        pipe.load_textual_inversion(path or spec, token=token or None, allow_pickle=args.allow_pickle)
    pipe.lora_dir = args.lora_dir
    classifier = None
    if args.classifier:
        from latentdiff.classifier import load_classifier

        classifier = load_classifier(args.classifier)
    classifier_scale = (1.0 if args.classifier_scale is None else args.classifier_scale) if classifier else 0.0
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    image_kw = {}
    if args.image is not None or args.mask is not None or args.outpaint is not None:
        image_kw = dict(image=args.image, mask_image=args.mask, strength=args.strength,
                        strength_steps=args.strength_steps, mask_blur=args.mask_blur, only_masked=args.only_masked,
                        only_masked_padding=args.padding, keep_unmasked=args.keep_unmasked,
                        outpaint=_parse_outpaint(args.outpaint))
    elif args.strength is not None:
        raise ValueError("--strength needs --image (the picture to start from)")
    if args.hires is not None:
        image_kw.update(hires_scale=args.hires, hires_strength=args.hires_strength,
                        hires_upscaler=args.hires_upscaler, hires_steps=args.hires_steps)
    out = pipe(args.prompt, args.negative_prompt, num_inference_steps=args.steps, sampler=args.sampler, eta=args.eta,
               guidance_scale=args.guidance, guidance_rescale=args.guidance_rescale, height=args.height,
               width=args.width, num_images_per_prompt=args.num_images, seed=seed,
               timestep_spacing=args.spacing, sigma_schedule=args.schedule, noise_sampler=args.noise_sampler,
               classifier=classifier, class_label=args.class_label,
               classifier_scale=classifier_scale, progress=True, check_memory=not args.no_memory_check,
               prompt_normalization=args.prompt_normalization, compile=args.compile, **image_kw)
    from latentdiff.fs import file_sha256

    files = {}
    for kind, path in (("image", args.image), ("mask", args.mask)):
        if path is not None:
            files.update({kind: str(path), f"{kind}_sha256": file_sha256(path)})
    from PIL.PngImagePlugin import PngInfo

    from latentdiff.a1111 import INFOTEXT_KEY, format_infotext
    from latentdiff.images import make_grid

    for image, params in zip(out.images, out.parameters):
        params = {**params, "guidance_rescale": args.guidance_rescale, "lora": args.lora, "model": args.model,
                  "classifier": args.classifier, "class_label": args.class_label,
                  "classifier_scale": classifier_scale if classifier else None, **files,
                  "embeddings": args.embedding, "lora_dir": args.lora_dir,
                  "prompt_normalization": args.prompt_normalization}
        info = PngInfo()
        info.add_text(PNG_KEY, json.dumps(params))
        info.add_text(INFOTEXT_KEY, format_infotext(params["prompt"], params["negative_prompt"], {  # A1111's chunk
            "Steps": params["steps"], "Sampler": params["a1111_sampler"], "CFG scale": params["guidance_scale"],
            "Seed": params["seed"], "Size": f"{params['width']}x{params['height']}", "Model": args.model}))
        print(save_new_png(image, out_dir, f"{_slug(args.prompt)}-{params['seed']}", pnginfo=info))
    if args.grid:
        print(save_new_png(make_grid(out.images), out_dir, "grid"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(MAIN_HELP)
        return 0 if argv else 2
    return run_cli(lambda: dispatch(argv[0], argv[1:]))


def entry() -> None:
    """The ``latentdiff`` console script: :func:`main`, then, after ``generate``, an exit without the
    interpreter's teardown: unloading torch, diffusers and transformers module by module takes ~1.5 s
    on the 2-core development CPU, after the images are already written (every file we write is closed
    and renamed into place before ``main`` returns). Logging, stdout and stderr are flushed first. Other
    commands (training writes TensorBoard logs at exit) end normally."""
    argv = sys.argv[1:]
    rc = main(argv)
    if argv[:1] == ["generate"]:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


def dispatch(cmd: str, rest: list[str]) -> int:
    """Run one subcommand; errors propagate to :func:`latentdiff.errors.run_cli`."""
    if cmd == "generate":
        return generate(rest)
    if cmd == "train":
        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: latentdiff train {{{','.join(TRAINERS)}}} [options]\n"
                  "  e.g. latentdiff train unet --config configs/emoji_unet.yaml --output-dir runs/emoji_unet\n"
                  "Run `latentdiff train KIND --help` for options.")
            return 0 if rest else 2
        if rest[0] not in TRAINERS:
            raise ValueError(f"Unknown trainer {rest[0]!r}; choose one of {', '.join(TRAINERS)}")
        return importlib.import_module(TRAINERS[rest[0]]).main(rest[1:]) or 0
    if cmd == "eval":
        return importlib.import_module("latentdiff.eval_cli").main(rest) or 0
    if cmd == "push":
        return importlib.import_module("latentdiff.hub").push_main(rest) or 0
    if cmd == "serve":
        return importlib.import_module("latentdiff.server").main(rest) or 0
    raise ValueError(f"Unknown command {cmd!r}; choose one of generate, train, eval, push, serve")


if __name__ == "__main__":
    entry()
