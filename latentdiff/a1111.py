"""AUTOMATIC1111 (stable-diffusion-webui) conventions that `latentdiff serve` speaks: sampler and
scheduler names, the ``parameters`` infotext written into PNGs, and ``<lora:name:weight>`` prompt tags.

Pure Python, no web framework: the formats are tested here without the ``serve`` extra.

The infotext is A1111's ``create_infotext`` / ``parse_generation_parameters`` format (what its PNG Info
tab and model-sharing sites read)::

    red apple <lora:shiny:0.8>
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 64x64, Model hash: 0123abcd45, Model: emoji
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from latentdiff.prompts import EXTRA_NETWORK_TAG, PromptTags, parse_prompt_tags  # noqa: F401 (PromptTags re-exported)

# ----------------------------------------------------------------------------------------------
# Samplers and schedulers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class A1111Sampler:
    """An A1111 sampler name and the ``TextToImagePipeline`` arguments that implement it."""

    name: str
    kwargs: dict  # e.g. {"sampler": "dpmpp_2m"}; a sigma schedule goes here too once the pipeline has one
    aliases: tuple[str, ...] = ()


# Built from the samplers' own A1111 names (latentdiff.samplers.A1111_SAMPLERS / A1111_SCHEDULES, the
# one table): each A1111 sampler label, and A1111's older combined names ("DPM++ 2M Karras" = sampler
# "DPM++ 2M" + schedule "Karras") carrying the sigma schedule. Names not listed are refused (422).
def _build_samplers() -> tuple[A1111Sampler, ...]:
    from latentdiff.samplers import A1111_SAMPLERS as LABELS
    from latentdiff.samplers import A1111_SCHEDULES as SCHEDULES

    out = []
    for label, name in LABELS.items():
        aliases = tuple(a for a in ((name, "k_" + name) if name not in ("ddim", "ddpm") else ())
                        if a.lower() != label.lower())
        out.append(A1111Sampler(label, {"sampler": name}, aliases))
    # first-order DPM-Solver++ has no A1111 name of its own; our registry name is its alias
    out.append(A1111Sampler("DPM++ 1", {"sampler": "dpmpp_1"}, ("dpmpp_1",)))
    for label, name in LABELS.items():
        if name in ("ddim", "ddpm"):
            continue
        for sched_label, sched in SCHEDULES.items():
            if sched != "default":
                out.append(A1111Sampler(f"{label} {sched_label}", {"sampler": name, "sigma_schedule": sched}))
    return tuple(out)


A1111_SAMPLERS: tuple[A1111Sampler, ...] = _build_samplers()


@dataclass(frozen=True)
class A1111Scheduler:
    name: str
    label: str
    kwargs: dict


def _build_schedulers() -> tuple[A1111Scheduler, ...]:
    """A1111's "Schedule type" list (its API names are lower-case: karras, exponential, ...), then our
    timestep spacings under their own names ("automatic" is the model's own schedule)."""
    from latentdiff.samplers import A1111_SCHEDULES as SCHEDULES

    out = [A1111Scheduler("automatic", "Automatic", {})]
    out += [A1111Scheduler(sched, label, {"sigma_schedule": sched}) for label, sched in SCHEDULES.items()
            if sched != "default"]
    out += [A1111Scheduler(n, label, {"timestep_spacing": n}) for n, label in
            (("leading", "Leading"), ("trailing", "Trailing"), ("linspace", "Linspace"), ("logsnr", "Log-SNR"))]
    return tuple(out)


A1111_SCHEDULERS: tuple[A1111Scheduler, ...] = _build_schedulers()


def _norm(name: str) -> str:
    return name.strip().lower()


def find_sampler(name: str) -> A1111Sampler:
    """The table entry for an A1111 sampler name or alias (case-insensitive); ValueError lists the valid names."""
    for s in A1111_SAMPLERS:
        if _norm(name) in (_norm(s.name), *map(_norm, s.aliases)):
            return s
    raise ValueError(f"Unknown sampler {name!r}; choose one of {', '.join(s.name for s in A1111_SAMPLERS)}")


def sampler_for(pipeline_sampler: str) -> A1111Sampler:
    """The A1111 entry whose kwargs are exactly ``{"sampler": pipeline_sampler}`` (for a model's default)."""
    for s in A1111_SAMPLERS:
        if s.kwargs == {"sampler": pipeline_sampler}:
            return s
    raise ValueError(f"no A1111 name for the pipeline sampler {pipeline_sampler!r}")


def find_scheduler(name: str) -> A1111Scheduler:
    for s in A1111_SCHEDULERS:
        if _norm(name) in (_norm(s.name), _norm(s.label)):
            return s
    raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(s.name for s in A1111_SCHEDULERS)}")


# ----------------------------------------------------------------------------------------------
# Infotext: the "parameters" PNG text chunk
# ----------------------------------------------------------------------------------------------

INFOTEXT_KEY = "parameters"  # A1111's PNG tEXt key


def quote(text) -> str:
    """A1111's ``quote``: values with commas, colons or newlines are written as JSON strings."""
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_infotext(prompt: str, negative_prompt: str, params: dict) -> str:
    """``prompt\\nNegative prompt: ...\\nKey: value, ...`` (None values are left out, as A1111 does)."""
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_infotext(text: str) -> dict[str, str]:
    """A1111's ``parse_generation_parameters``: {"Prompt", "Negative prompt", "Steps", "Sampler", ...,
    "Size-1", "Size-2"}; values stay strings, as A1111 returns them from ``/sdapi/v1/png-info``."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # no parameter line: everything is prompt
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    res = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for k, v in _PARAM.findall(last):
        if len(v) > 1 and v[0] == '"' and v[-1] == '"':
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        m = _SIZE.match(v)
        if m:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    return res


def params_from_infotext(text: str) -> dict:
    """The settings of an A1111 ``parameters`` infotext as the JSON dict that ``latentdiff generate``
    stores under its own PNG key (what ``--from-png`` reads). ValueError names anything we cannot
    reproduce: a sampler or schedule we lack, LoRA tags (A1111 LoRA names mean nothing without its
    folders), a missing field. A1111 draws its initial noise differently, so the settings carry over,
    the pixels do not."""
    p = parse_infotext(text)
    missing = [k for k in ("Steps", "Sampler", "CFG scale", "Seed", "Size-1") if k not in p]
    if missing:
        raise ValueError(f"the PNG's A1111 parameters lack {', '.join(missing)}; cannot regenerate from them")
    tags = parse_prompt_tags(p["Prompt"])
    if tags.loras or tags.ignored:
        found = ", ".join(m.group(0) for m in EXTRA_NETWORK_TAG.finditer(p["Prompt"]))
        raise ValueError(f"the PNG's prompt has A1111 extra-network tags ({found}); --from-png cannot resolve "
                         "A1111 LoRA names: rerun with the prompt and --lora PATH:WEIGHT")
    sampler = find_sampler(p["Sampler"])
    kwargs = dict(sampler.kwargs)
    if p.get("Schedule type"):
        kwargs.update(find_scheduler(p["Schedule type"]).kwargs)
    unsupported = sorted(set(kwargs) - {"sampler", "timestep_spacing", "sigma_schedule"})
    if unsupported:
        raise ValueError(f"sampler {sampler.name!r} needs pipeline options --from-png does not pass: {unsupported}")
    try:
        return {
            "prompt": tags.prompt, "negative_prompt": p.get("Negative prompt", ""), "model": p.get("Model", "emoji"),
            "sampler": kwargs["sampler"], "steps": int(p["Steps"]), "guidance_scale": float(p["CFG scale"]),
            "eta": float(p["Eta DDIM"]) if kwargs["sampler"] == "ddim" and "Eta DDIM" in p else None,
            "seed": int(p["Seed"]), "width": int(p["Size-1"]), "height": int(p["Size-2"]),
            "timestep_spacing": kwargs.get("timestep_spacing"), "sigma_schedule": kwargs.get("sigma_schedule"),
            "lora": [], "guidance_rescale": 0.0,
        }
    except ValueError as e:
        raise ValueError(f"the PNG's A1111 parameters have an unreadable number ({e})") from None


__all__ = ["A1111_SAMPLERS", "A1111_SCHEDULERS", "A1111Sampler", "A1111Scheduler", "INFOTEXT_KEY",
           "PromptTags", "find_sampler", "find_scheduler", "format_infotext", "parse_infotext",
           "params_from_infotext", "parse_prompt_tags", "quote", "sampler_for"]
