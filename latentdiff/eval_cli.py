"""``latentdiff eval``: the command line over the generic metrics (:mod:`latentdiff.evaluation`), the
seed-diversity check (:mod:`latentdiff.diversity`) and the emoji-specific checks
(:mod:`latentdiff.emoji_eval`). It sits above all three, so none of them imports another upwards."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import time
from pathlib import Path

import torch

from latentdiff import emoji_eval
from latentdiff.cli import parse_lora_spec
from latentdiff.diversity import diversity_markdown, diversity_report
from latentdiff.emoji_checks import colour_check, default_colour_prompts, skin_tone_sets
from latentdiff.emoji_eval import colour_report, skin_report
from latentdiff.evaluation import (
    DEFAULT_GRID_PROMPTS,
    ImageSet,
    align_labels,
    evaluator_outputs,
    generate,
    generated_report,
    guidance_report,
    load_image_set,
    plot_sampler_report,
    real_report,
    reference_fd,
    sampler_report,
    save_labelled_grid,
    vae_roundtrip,
)
from latentdiff.train.evaluator import get_evaluator

logger = logging.getLogger("latentdiff.eval")
DEFAULT_SECTIONS = ("real", "generated", "colour", "skin", "samplers", "guidance")
EXTRA_SECTIONS = ("diversity", "composition", "style")  # opt-in (--sections): they need the emoji data


# --------------------------------------------------------------------------- tables


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_report(results: dict) -> str:
    """The results dict as markdown tables (what the CLI prints)."""
    out = []
    cols = results.get("label_columns", [])
    if "real" in results:
        r = results["real"]
        out += ["### Evaluator on real images", "",
                "| set | n | " + " | ".join(f"{c} accuracy" for c in cols) + " | Fréchet distance to real test |",
                "|---|---|" + "---|" * len(cols) + "---|",
                f"| real test | {r['n_test']} | " + " | ".join(_pct(r["test_accuracy"].get(c)) for c in cols)
                + " | – |",
                f"| real train (all) | {r['n_train']} | " + " | ".join("–" for _ in cols)
                + f" | {_num(r['fd_train_test'])} |",
                f"| real train (subset of {r['n_test']}) | {r['n_test']} | " + " | ".join("–" for _ in cols)
                + f" | {_num(r['fd_train_test_matched'])} |", ""]
    if "generated" in results:
        g = results["generated"]
        out += ["### Images generated from the test captions", "",
                "| set | n | " + " | ".join(f"{c} accuracy" for c in cols) + " | Fréchet distance |",
                "|---|---|" + "---|" * len(cols) + "---|",
                f"| generated | {g['n']} | " + " | ".join(_pct(g["accuracy"].get(c)) for c in cols)
                + f" | {_num(g['fd_generated_real'])} |",
                f"| real, same rows | {g['n']} | " + " | ".join(_pct(g["real_accuracy_same_rows"].get(c)) for c in cols)
                + f" | {_num(g.get('fd_reference'))} (real train subset vs these) |"]
        if "vae_accuracy_same_rows" in g:
            out.append(f"| real through the model's VAE, same rows (the ceiling) | {g['n']} | "
                       + " | ".join(_pct(g["vae_accuracy_same_rows"].get(c)) for c in cols)
                       + f" | {_num(g['fd_vae_real'])} |")
        out.append("")
        if cols and g["real_accuracy_same_rows"].get(cols[0]):
            ratio = g["accuracy"][cols[0]] / g["real_accuracy_same_rows"][cols[0]]
            out += [f"{cols[0]} accuracy ratio generated/real: {ratio:.2f}; Fréchet ratio generated/reference: "
                    f"{g['fd_generated_real'] / g['fd_reference']:.2f}" if g.get("fd_reference") else "", ""]
    if "colour" in results:
        c = results["colour"]
        ref, seeds = c.get("reference"), c.get("seeds", 1)
        prompts, rate = f"{c['n']}", _pct(c["rate"])
        if seeds > 1:  # pooled over several seed passes: say how many, and how far the passes spread
            prompts += f" ({c['n'] // seeds} × {seeds} seeds)"
            rate += f" (per seed {_pct(min(c['per_seed']))}–{_pct(max(c['per_seed']))})"
        out += ["### Colour words (dominant colour of the non-background pixels)", "",
                "| images | prompts | obeyed |", "|---|---|---|", f"| generated | {prompts} | {rate} |"]
        if ref:
            out.append(f"| real images with a colour-word caption (checker sanity) | {ref['n']} | {_pct(ref['rate'])} |")
        out += ["", "per colour (generated): " + ", ".join(f"{k} {_pct(v)}" for k, v in c["per_colour"].items()), ""]
    if "skin" in results:
        s = results["skin"]
        out += ["### Skin-tone modifiers (skin luminance light > medium-light > medium > medium-dark > dark)", "",
                "| images | sets of 5 | pairs in order | sets fully ordered |", "|---|---|---|---|",
                f"| generated (one noise per set) | {s['sets']} | {_pct(s['pairs_obeyed'])} | {_pct(s['fully_ordered'])} |"]
        if s.get("reference"):
            r = s["reference"]
            out.append(f"| real (checker sanity) | {r['sets']} | {_pct(r['pairs_obeyed'])} | {_pct(r['fully_ordered'])} |")
        out.append("")
    if "samplers" in results:
        s = results["samplers"]
        out += [f"### Samplers: latent RMSE vs {s['reference']} from the same noise ({s['n']} prompts)", "",
                "| sampler | schedule | spacing | steps | NFE | latent RMSE | " + " | ".join(f"{c} accuracy" for c in cols)
                + " | s/image |",
                "|---|---|---|---|---|---|" + "---|" * len(cols) + "---|"]
        for r in s["rows"]:
            name = r["sampler"] + (" (stochastic)" if r["stochastic"] else "")
            out.append(f"| {name} | {r.get('schedule', 'default')} | {r.get('spacing', '')} | {r['steps']} | "
                       f"{r.get('nfe', r['steps'])} | {_num(r['latent_rmse'])} | "
                       + " | ".join(_pct(r.get("accuracy", {}).get(c)) for c in cols)
                       + f" | {_num(r['seconds_per_image'])} |")
        out.append("")
    if "guidance" in results:
        g = results["guidance"]
        out += [f"### Classifier-free guidance sweep ({g['n']} test captions, {g['n_colour']} colour prompts)", "",
                "| guidance | " + " | ".join(f"{c} accuracy" for c in cols) + " | Fréchet distance | colour obeyed |",
                "|---|" + "---|" * len(cols) + "---|---|"]
        for r in g["rows"]:
            out.append(f"| {r['guidance_scale']:g} | " + " | ".join(_pct(r.get("accuracy", {}).get(c)) for c in cols)
                       + f" | {_num(r.get('fd'))} | {_pct(r.get('colour_rate'))} |")
        out.append("")
    if "diversity" in results:

        out += diversity_markdown(results["diversity"])
    if "composition" in results or "style" in results:
        from latentdiff import emoji_eval

        out += emoji_eval.composition_markdown(results["composition"]) if "composition" in results else []
        out += emoji_eval.style_markdown(results["style"]) if "style" in results else []
    return "\n".join(out)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if not torch.is_tensor(v)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------- CLI


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentdiff eval",
        description="Evaluate a text-to-image model on a captioned dataset with labels: a classifier of the "
        "labels trained on the real training split (accuracy on real and generated test images, Fréchet "
        "distance in its feature space), colour-word and skin-tone checks, a sampler-convergence report and "
        "a classifier-free guidance sweep. Prints markdown tables; --out writes JSON.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  latentdiff eval --model emoji --out results.json --grid grid.png          # everything
  latentdiff eval --model emoji --limit 64 --sampler-limit 4 --skin-limit 4 --colour-limit 18 --guidance-limit 16
  latentdiff eval --train-evaluator --sections real                         # (re)train the evaluator only
  latentdiff eval --model runs/emoji/final --sections samplers --samplers ddim,dpmpp_2m --sampler-steps 10,20
  latentdiff eval --sections samplers --samplers ddim,dpmpp_2m --sampler-spacings trailing,logsnr
  latentdiff eval --model runs/emoji/final --sections guidance --guidance-scales 1,3,5,7.5
  latentdiff eval --sections diversity,composition,style --diversity-words 12 --composition-limit 64 --style-limit 16
  latentdiff eval --sections composition --composition-gallery emoji:all --composition-prompt "{prompt} :1 AND {object} :0.5"
""",
    )
    p.add_argument("--model", default="emoji", help="built-in name, diffusers folder or Hub repo id (default: emoji)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="evaluate the model with this LoRA loaded (repeatable), e.g. an LCM-LoRA with --sampler lcm")
    p.add_argument("--dataset", default="emoji", help="dataset source for build_dataset (default: emoji)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--label-columns", default="group,subgroup", help="label columns (default: group,subgroup)")
    p.add_argument("--resolution", type=int, default=64, help="resolution real images are read at (default: 64)")
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated subset of {','.join(DEFAULT_SECTIONS + EXTRA_SECTIONS)} (default: "
                        f"{','.join(DEFAULT_SECTIONS)})")
    p.add_argument("--evaluator", default=None,
                   help="evaluator folder (default: runs/evaluator-DATASET); trained there if missing")
    p.add_argument("--train-evaluator", action="store_true", help="(re)train the evaluator even if it exists")
    p.add_argument("--evaluator-epochs", type=int, default=30,
                   help="evaluator training epochs (default: 30; ~17 s on an H100, tens of minutes on 2 CPU cores)")
    p.add_argument("--evaluator-resolution", type=int, default=32,
                   help="the evaluator's input size (default: 32; 64 measured no better)")
    p.add_argument("--evaluator-width", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="use the first N test captions/images (default: all)")
    p.add_argument("--stride", type=int, default=1,
                   help="use every Nth test row (before --limit): a sample spread over the split, e.g. over "
                        "every style of emoji:all, whose rows are sorted by style (default: 1, every row). Accuracies "
                        "hold up on a sample; Fréchet ratios do not (the reference grows faster at small n)")
    p.add_argument("--colour-limit", type=int, default=None, help="use the first N colour prompts")
    p.add_argument("--colour-seeds", type=int, default=1,
                   help="generate each colour prompt with N seeds (--seed .. --seed+N-1) and pool the check "
                        "(default: 1; one pass of 36 prompts moves by up to ~10 points from seed to seed)")
    p.add_argument("--skin-limit", type=int, default=None, help="use the first N five-tone sets")
    p.add_argument("--sampler-limit", type=int, default=8, help="prompts in the sampler report (default: 8)")
    p.add_argument("--guidance-limit", type=int, default=None,
                   help="test captions per scale in the guidance sweep (default: --limit)")
    p.add_argument("--samplers", default="ddim,ddpm,dpmpp_2m")
    p.add_argument("--sampler-steps", default="5,10,20,50")
    p.add_argument("--sampler-spacings", default=None,
                   help="comma-separated timestep spacings for the sampler report, e.g. trailing,logsnr "
                        "(default: --spacing, i.e. the model's)")
    p.add_argument("--sampler-schedules", default="default",
                   help="comma-separated sigma schedules for the sampler report, e.g. default,karras,exponential")
    p.add_argument("--sampler-plot", default=None, help="write the sampler report's error-vs-NFE plot (PNG) here")
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--guidance-scales", default="1,2,3,5,7.5")
    p.add_argument("--sampler", default=None, help="sampler for the other sections, a registry or A1111 name (\"DPM++ 2M Karras\"; default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="steps for the other sections (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--spacing", default=None, help="timestep spacing: leading | trailing | linspace | logsnr "
                                                   "(default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed+i (default: 0)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--grid", default=None, help="write a labelled PNG grid of --grid-prompts here")
    p.add_argument("--grid-prompts", default=None, help="'|'-separated prompts for --grid (default: a mix)")
    p.add_argument("--diversity-words", type=int, default=20,
                   help="generic one-word prompts taken from the captions for the diversity section (default: 20)")
    p.add_argument("--diversity-prompts", default=None, help="comma-separated words instead (e.g. face,cat,heart)")
    p.add_argument("--diversity-seeds", type=int, default=8, help="images per word (default: 8)")
    p.add_argument("--composition-limit", type=int, default=96,
                   help="colour × object prompts (a fixed spread-out sample; 0 = all 2,796 of the emoji; default: 96)")
    p.add_argument("--composition-gallery", default=None,
                   help="dataset whose real object images (train and test) the composition section's object judge "
                        "compares against, e.g. emoji:all for a model that draws every style (default: --dataset; "
                        "the prompts always come from --dataset)")
    p.add_argument("--composition-prompt", default="{prompt}", metavar="TEMPLATE",
                   help="how each colour × object prompt is asked: {prompt} ('blue apple'), {colour} and {object} "
                        "filled in, e.g. '{prompt} :1 AND {object} :0.5' (composable prompt: extra guidance "
                        "towards the plain object; default: {prompt}, the prompt as it is)")
    p.add_argument("--styles", default="noto,symbola",
                   help="emoji styles the style classifier tells apart (default: noto,symbola)")
    p.add_argument("--style-dataset", default="emoji", help="the styles are read as STYLE_DATASET:STYLE (default: emoji)")
    p.add_argument("--style-limit", type=int, default=32, help="test captions per style variant (default: 32)")
    p.add_argument("--style-negative", default="none", choices=emoji_eval.STYLE_NEGATIVES,
                   help="negative prompt of the style-suffixed generations: none, or plain (the caption without "
                        "its suffix, so guidance amplifies the style word; default: none)")
    p.add_argument("--style-amplify", type=float, default=0.0,
                   help="ask for a style with the composable prompt '<caption>, <style> style :1+A AND <caption> :-A' "
                        "(ordinary guidance plus A times the guidance along the suffix; default: 0, the plain suffix)")
    p.add_argument("--style-evaluator-epochs", type=int, default=8,
                   help="epochs of the separate style classifier when the evaluator has no style head (default: 8)")
    p.add_argument("--no-progress", action="store_true")
    return p


def select_test_rows(total: int, stride: int = 1, limit: int | None = None) -> range:
    """The test rows the sections use: every ``stride``-th of ``total`` (a sample spread over the
    split), then the first ``limit`` of those."""
    rows = range(0, total, stride)
    return rows[:limit or len(rows)]


def check_eval_inputs(args: argparse.Namespace, sections: list[str]) -> None:
    """Every input that a later stage would trip over, checked before the minutes of loading data and
    training the evaluator: the device, the model folder, the samplers, the output paths."""
    from latentdiff.io import check_writable_dir, resolve_device, resolve_model_dir
    from latentdiff.samplers import get_sampler, resolve_sampler

    resolve_device(args.device)
    if [s for s in sections if s != "real"] or args.grid:
        path = resolve_model_dir(args.model)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"--model {args.model}: {path} is not a pipeline folder (model_index.json is "
                                    "missing)")
    for name in args.samplers.split(",") if "samplers" in sections else []:
        get_sampler(name.strip())
    if args.sampler:  # as `latentdiff generate --sampler` takes it: an A1111 name ("DPM++ 2M Karras") too
        resolve_sampler(args.sampler)
    if "composition" in sections and args.composition_gallery:
        from latentdiff.data.datasets import _classify_source

        try:
            _classify_source(args.composition_gallery)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"--composition-gallery {args.composition_gallery}: {e}") from None
    if "composition" in sections:
        from latentdiff.prompts import split_and

        try:
            example = emoji_eval.composition_text(args.composition_prompt,
                                                  {"prompt": "blue apple", "colour": "blue", "object": "apple"})
        except ValueError as e:
            raise ValueError(f"--composition-prompt: {e}") from None
        if not [t for t, _ in split_and(example) if t.strip()]:
            raise ValueError(f"--composition-prompt {args.composition_prompt!r} asks for nothing (it gives "
                             f"{example!r}); use {{prompt}} or {{colour}} {{object}}")
    if args.stride < 1:
        raise ValueError(f"--stride {args.stride}: give 1 or more (1 = every test row, 4 = every fourth)")
    if "colour" in sections and args.colour_seeds < 1:
        raise ValueError(f"--colour-seeds {args.colour_seeds}: give at least 1 seed per colour prompt")
    for flag, value in (("--out", args.out), ("--grid", args.grid)):
        if value:
            if Path(value).is_dir():
                raise ValueError(f"{flag} {value} is a folder; pass a file path")
            check_writable_dir(Path(value).parent, f"{flag} folder")


def evaluate(args: argparse.Namespace) -> dict:
    """Run the sections named in ``args.sections`` (see :func:`build_parser`); returns the results dict
    (tensors included under "images" keys; :func:`_jsonable` drops them)."""
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(DEFAULT_SECTIONS + EXTRA_SECTIONS))
    if unknown:
        raise ValueError(f"unknown --sections {unknown}; choose from {', '.join(DEFAULT_SECTIONS + EXTRA_SECTIONS)}")
    cols = [c.strip() for c in args.label_columns.split(",") if c.strip()]
    progress = not args.no_progress
    check_eval_inputs(args, sections)
    results: dict = {"dataset": args.dataset, "label_columns": cols, "sections": sections}
    train_set = load_image_set(args.dataset, args.train_split, args.resolution, cols, progress=progress)
    test_full = align_labels(load_image_set(args.dataset, args.test_split, args.resolution, cols, progress=progress),
                             train_set.label_names)
    test_set = test_full.subset(select_test_rows(len(test_full), args.stride, args.limit))
    results["test_rows"] = {"n": len(test_set), "stride": args.stride}

    needs_net = bool({"real", "generated", "samplers", "guidance", "diversity"} & set(sections)
                     or ("style" in sections and "style" in cols)) and cols
    net = None
    folder = Path(args.evaluator or f"runs/evaluator-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.dataset)}")
    if needs_net:
        net, meta = get_evaluator(folder, train_set, retrain=args.train_evaluator, epochs=args.evaluator_epochs,
                                  width=args.evaluator_width, resolution=args.evaluator_resolution, seed=args.seed,
                                  device=args.device, progress=progress, dataset=args.dataset)
        results["evaluator"] = {"folder": str(folder), **{k: v for k, v in meta.items() if k != "label_names"}}
    if "real" in sections and net is not None:
        results["real"] = real_report(net, train_set, test_full, seed=args.seed)

    model_sections = [s for s in sections if s != "real"]
    if not model_sections and not args.grid:
        return results
    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(args.model, device=args.device)
    results["model"] = args.model
    for spec in args.lora:
        path, scale = parse_lora_spec(spec)  # as `latentdiff generate --lora` reads it
        pipe.load_lora(path, scale=scale)
    results["lora"] = list(args.lora)
    gen = {"steps": args.steps, "sampler": args.sampler, "guidance_scale": args.guidance,
           "timestep_spacing": args.spacing}
    results["sampling"] = {"sampler": args.sampler or pipe.defaults.sampler,
                           "steps": args.steps or pipe.defaults.num_inference_steps,
                           "timestep_spacing": args.spacing or pipe.default_timestep_spacing,
                           "guidance_scale": args.guidance if args.guidance is not None else pipe.defaults.guidance_scale}
    common = {"seed": args.seed, "batch_size": args.batch_size, "progress": progress}
    colour_prompts = default_colour_prompts()[:args.colour_limit]

    if "generated" in sections and net is not None:
        images, _ = generate(pipe, test_set.captions, desc="test captions", **common, **gen)
        results["generated"] = generated_report(net, images, test_set,
                                                reconstructed=vae_roundtrip(pipe.vae, test_set.images))
        results["generated"]["fd_reference"] = reference_fd(net, train_set, test_set, seed=args.seed)
    both = ImageSet.concat(train_set, test_full)
    if "colour" in sections:
        results["colour"] = colour_report(pipe, colour_prompts, seeds=args.colour_seeds, reference=both, **common, **gen)
    if "skin" in sections:
        # every base with all five tones, of which the test split holds at least one (so some of the
        # five prompts were never trained on)
        sets = skin_tone_sets(both.captions, among=test_full.captions)[:args.skin_limit]
        results["skin"] = skin_report(pipe, sets, reference=both, **common, **gen)
        results["skin"]["prompts"] = sets
    if "samplers" in sections:
        sub = test_set.subset(range(min(len(test_set), args.sampler_limit)))
        results["samplers"] = sampler_report(
            pipe, sub.captions, sub.labels, net, samplers=args.samplers.split(","), steps=_ints(args.sampler_steps),
            spacings=[x.strip() or None for x in args.sampler_spacings.split(",")] if args.sampler_spacings
            else (args.spacing,), reference_steps=args.reference_steps, guidance_scale=args.guidance,
            schedules=[x.strip() for x in args.sampler_schedules.split(",")], **common)
        if args.sampler_plot:
            plot_sampler_report(results["samplers"], args.sampler_plot)
    if "guidance" in sections:
        sweep_set = test_set.subset(range(min(len(test_set), args.guidance_limit or len(test_set))))
        results["guidance"] = guidance_report(pipe, sweep_set, net, _floats(args.guidance_scales),
                                              colour_prompts=colour_prompts,
                                              colour_rate=lambda ims, ps: colour_check(ims, ps)["rate"], steps=args.steps, sampler=args.sampler,
                                              timestep_spacing=args.spacing, **common)
    if {"diversity", "composition", "style"} & set(sections):
        _emoji_sections(args, sections, results, pipe, net, folder, both, test_full, test_set, common, gen)
    if args.grid:
        prompts = args.grid_prompts.split("|") if args.grid_prompts else list(DEFAULT_GRID_PROMPTS)
        images, _ = generate(pipe, prompts, desc="grid", **common, **gen)
        save_labelled_grid(images, prompts, args.grid)
        results["grid"] = {"path": str(args.grid), "prompts": prompts}
    return results


def _emoji_sections(args, sections, results, pipe, net, folder, both, test_full, test_set, common, gen) -> None:
    """The diversity, composition and style sections (:mod:`latentdiff.diversity`, :mod:`latentdiff.emoji_eval`)."""

    t0 = time.perf_counter()
    if "diversity" in sections:
        words = [w.strip() for w in args.diversity_prompts.split(",") if w.strip()] if args.diversity_prompts \
            else emoji_eval.emoji_diversity_words(both.captions, args.diversity_words)
        results["diversity"] = diversity_report(
            pipe, words, both.images, both.captions, features=(lambda x: evaluator_outputs(net, x)[1]) if net else None,
            seeds=args.diversity_seeds, **common, **gen)
        results["diversity"]["seconds"], t0 = round(time.perf_counter() - t0, 1), time.perf_counter()
    if "composition" in sections:
        prompts = emoji_eval.composition_prompts(both, limit=args.composition_limit or None)
        gallery = both  # the object judge's real images
        if args.composition_gallery and args.composition_gallery != args.dataset:
            train, test = (load_image_set(args.composition_gallery, split, args.resolution, ["group"],
                                          progress=common["progress"]) for split in (args.train_split, args.test_split))
            gallery = ImageSet.concat(train, align_labels(test, train.label_names))
        results["composition"] = emoji_eval.composition_report(pipe, gallery, prompts,
                                                               template=args.composition_prompt, **common, **gen)
        results["composition"]["gallery"] = args.composition_gallery or args.dataset
        results["composition"]["seconds"], t0 = round(time.perf_counter() - t0, 1), time.perf_counter()
    if "style" in sections:
        if net is not None and "style" in net.heads:  # the data has a style column: the evaluator knows it
            style_net, style_test = net, test_full
        else:
            styles = [s.strip() for s in args.styles.split(",") if s.strip()]
            base = args.style_dataset
            progress = common["progress"]
            style_train = emoji_eval.load_style_set(styles, args.train_split, args.resolution, base, progress)
            style_test = emoji_eval.load_style_set(styles, args.test_split, args.resolution, base, progress)
            style_folder = folder.with_name(f"{folder.name}-style-{'+'.join(style_train.label_names['style'])}")
            style_net, meta = get_evaluator(style_folder, style_train, retrain=args.train_evaluator,
                                            epochs=args.style_evaluator_epochs, width=args.evaluator_width,
                                            resolution=args.evaluator_resolution, seed=args.seed, device=args.device,
                                            progress=progress, dataset=f"{base}:{'+'.join(styles)}")
            results["style_evaluator"] = {"folder": str(style_folder),
                                          **{k: v for k, v in meta.items() if k != "label_names"}}
        captions = test_set.captions[:args.style_limit]
        groups = test_set.labels["group"][:len(captions)] if "group" in test_set.labels else None
        results["style"] = emoji_eval.style_report(pipe, style_net, style_test, captions, negative=args.style_negative,
                                                   amplify=args.style_amplify,
                                                   groups=groups,  # used when style_net has a group head
                                                   **common, **gen)
        results["style"]["seconds"] = round(time.perf_counter() - t0, 1)  # includes training the classifier


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_progress:  # every bar, transformers' and diffusers' "Loading weights" too, not only ours
        from latentdiff.progress import disable_progress_bars

        disable_progress_bars()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    results = evaluate(args)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(markdown_report(results))
    if args.out:
        from latentdiff.config import atomic_write_text

        atomic_write_text(args.out, json.dumps(_jsonable(results), indent=2))
        print(f"results written to {args.out}")
    return 0


__all__ = ["DEFAULT_SECTIONS", "EXTRA_SECTIONS", "build_parser", "evaluate", "markdown_report", "main", "select_test_rows"]
