"""LoRA states and their key formats: the in-memory layout (diffusers keys + one 0-d ``.alpha`` per
module), kohya names both ways, pre-peft diffusers keys (through diffusers' own converters), and the
``LoraConfig`` diffusers stores in a file's header. Pure functions over dicts of tensors: no files,
no models.

Why kohya names are converted here and not by diffusers' ``lora_state_dict``: its kohya mapping
(``lora_conversion_utils._convert_unet_lora_key``) is a private replace list with SDXL heuristics,
and keys it does not place are dropped without a word (diffusers #14005, #9291). :func:`from_kohya`
places every key or names the ones it cannot.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Iterable, Sequence

import torch

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key for the LoraConfig
TRAINING_METADATA_KEY = "latentdiff"  # our header key: JSON of base model, rank, alpha, prompts, steps
COMPONENTS = ("unet", "text_encoder")
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}

# Target module name suffixes (peft matches a target against the end of a module's dotted name).
UNET_ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
UNET_FF_TARGETS = ("ff.net.0.proj", "ff.net.2")
UNET_CONV_TARGETS = ("conv1", "conv2", "conv_shortcut", "proj_in", "proj_out")
TEXT_ENCODER_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
TEXT_ENCODER_MLP_TARGETS = ("fc1", "fc2")

# Words made of several "_"-joined parts in diffusers' UNet2DConditionModel and transformers'
# CLIPTextModel module names. kohya joins a module path with "_", so these are what must be
# glued back when reading a kohya name; longest first so "conv_norm_out" wins over "conv_out".
_COMPOUND_WORDS = sorted(
    {
        # UNet2DConditionModel
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
        "add_k_proj", "add_v_proj", "proj_in", "proj_out", "conv_in", "conv_out", "conv_shortcut",
        "conv_norm_out", "time_emb_proj", "time_embedding", "linear_1", "linear_2", "class_embedding",
        "add_embedding", "encoder_hid_proj", "norm_cross",
        # CLIPTextModel
        "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm1", "layer_norm2",
        "final_layer_norm", "token_embedding", "position_embedding", "text_projection",
    },
    key=lambda w: -w.count("_"),
)





def _split_key(key: str) -> tuple[str, str, str]:
    """"unet.a.b.lora_A.weight" -> ("unet", "a.b", "lora_A.weight"); "unet.a.b.alpha" -> (..., "alpha")."""
    component, _, rest = key.partition(".")
    for suffix in ("lora_A.weight", "lora_B.weight", "alpha"):
        if rest.endswith("." + suffix):
            return component, rest[: -len(suffix) - 1], suffix
    return component, rest, ""


def lora_modules(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group a LoRA state by module: {"unet.<module>": {"lora_A.weight": A, "lora_B.weight": B, "alpha": α}}."""
    out: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
    for key, value in state.items():
        component, module, part = _split_key(key)
        out[f"{component}.{module}" if part else key][part or "?"] = value
    return dict(out)


def lora_rank(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Rank of each module (rows of A)."""
    return {m: int(p["lora_A.weight"].shape[0]) for m, p in lora_modules(state).items() if "lora_A.weight" in p}


def kohya_name(component: str, module: str) -> str:
    """kohya's name of a module: ``lora_unet_`` / ``lora_te_`` + the dotted path joined with "_"."""
    if component == "text_encoder" and not module.startswith("text_model."):
        module = "text_model." + module
    return KOHYA_PREFIXES[component] + module.replace(".", "_")


def module_from_kohya_name(name: str) -> tuple[str, str]:
    """Inverse of :func:`kohya_name`: ``lora_unet_down_blocks_0_..._to_out_0`` ->
    ("unet", "down_blocks.0....to_out.0"). Dots come back everywhere except inside the known
    multi-part words of the diffusers U-Net and the CLIP text model (``_COMPOUND_WORDS``).
    ValueError for a prefix other than lora_unet_/lora_te_ (e.g. SDXL's lora_te1_/lora_te2_)."""
    found = [(c, p) for c, p in KOHYA_PREFIXES.items() if name.startswith(p)]
    if not found:
        raise ValueError(f"{name!r}: not a kohya SD 1.x/2.x LoRA name (expected the prefix lora_unet_ or lora_te_)")
    component, prefix = found[0]
    parts = name[len(prefix):].split("_")
    words: list[str] = []
    i = 0
    while i < len(parts):
        for compound in _COMPOUND_WORDS:
            n = compound.count("_") + 1
            if "_".join(parts[i : i + n]) == compound:
                words.append(compound)
                i += n
                break
        else:
            words.append(parts[i])
            i += 1
    return component, ".".join(words)


def to_kohya(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA state (diffusers keys + ``.alpha``) in the kohya/A1111/ComfyUI key format.

    ``X.lora_A.weight`` -> ``lora_..._X.lora_down.weight``, ``lora_B`` -> ``lora_up``, α -> ``.alpha``
    (α = rank when the state has none, i.e. scale 1: the diffusers convention). Tensors are not copied."""
    out = {}
    for module, parts in lora_modules(state).items():
        component, _, path = module.partition(".")
        if component not in KOHYA_PREFIXES or not {"lora_A.weight", "lora_B.weight"} <= set(parts):
            raise ValueError(f"{module}: not a LoRA module of the unet or text_encoder with lora_A and lora_B "
                             f"(has {sorted(parts)})")
        name = kohya_name(component, path)
        out[f"{name}.lora_down.weight"] = parts["lora_A.weight"]
        out[f"{name}.lora_up.weight"] = parts["lora_B.weight"]
        alpha = parts.get("alpha")
        out[f"{name}.alpha"] = alpha if alpha is not None else torch.tensor(float(parts["lora_A.weight"].shape[0]))
    return out


def from_kohya(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA (``lora_unet_*`` / ``lora_te_*`` with ``lora_down``/``lora_up``/``alpha``)
    as a LoRA state in diffusers keys. Keys it cannot place (LyCORIS/LoHa, DoRA scales, SDXL's second
    text encoder, an ``up`` without its ``down``) are a ValueError listing them, never dropped."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key in state:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = f"{name}.lora_up.weight"
        if up not in state:
            continue  # reported below as left over
        if not name.startswith(tuple(KOHYA_PREFIXES.values())):
            continue  # e.g. SDXL's lora_te1_/lora_te2_: reported below as left over
        component, module = module_from_kohya_name(name)
        out[f"{component}.{module}.lora_A.weight"] = state[key]
        out[f"{component}.{module}.lora_B.weight"] = state[up]
        used |= {key, up}
        if f"{name}.alpha" in state:
            out[f"{component}.{module}.alpha"] = state[f"{name}.alpha"]
            used.add(f"{name}.alpha")
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"{len(left)} kohya key(s) are not plain SD 1.x/2.x LoRA (lora_down/lora_up/alpha of "
                         f"lora_unet_/lora_te_ modules; SDXL, LyCORIS/LoHa and DoRA are not supported) and cannot "
                         f"be loaded: {_short_list(left)}")
    return out


def _short_list(items: Sequence[str], n: int = 12) -> str:
    items = list(items)
    head = ", ".join(items[:n])
    return head + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank_pattern/alpha_pattern lookup (``peft.utils.other.get_pattern_key``): the first
    pattern that matches the end of the module's dotted name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key.lstrip('^')})$", module):
            return value
    return default


def lora_config_dict(state: dict[str, torch.Tensor], component: str, dropout: float = 0.0) -> dict:
    """The ``LoraConfig`` keyword arguments diffusers stores in ``lora_adapter_metadata`` for one
    component: the most common rank/α as ``r``/``lora_alpha``, others in ``rank_pattern``/``alpha_pattern``,
    and the exact module list as ``target_modules`` (text-encoder names without ``text_model.``, so
    they match CLIPTextModel with and without that level)."""
    modules = {m.partition(".")[2]: p for m, p in lora_modules(state).items() if m.startswith(component + ".")}
    if not modules:
        raise ValueError(f"the LoRA state has no {component} modules")
    short = {m: (m.removeprefix("text_model.") if component == "text_encoder" else m) for m in modules}
    ranks = {short[m]: int(p["lora_A.weight"].shape[0]) for m, p in modules.items()}
    alphas = {short[m]: float(p["alpha"]) if "alpha" in p else float(ranks[short[m]]) for m, p in modules.items()}
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {f"^{m}": v for m, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {f"^{m}": v for m, v in sorted(alphas.items()) if v != alpha},
        "target_modules": sorted(ranks),
        "lora_dropout": float(dropout),
        "use_dora": False,
        "use_rslora": False,
        "lora_bias": False,
        "init_lora_weights": True,
    }


def _alphas_from_metadata(weights: dict[str, torch.Tensor], metadata: dict | None) -> dict[str, torch.Tensor]:
    """Add ``.alpha`` entries to a diffusers-format state from its LoraConfig metadata (absent: α = r,
    diffusers' convention for files without metadata)."""
    out = dict(weights)
    for module, parts in lora_modules(weights).items():
        if "lora_A.weight" not in parts:
            continue
        component, _, path = module.partition(".")
        r = int(parts["lora_A.weight"].shape[0])
        cfg = {k.removeprefix(component + "."): v for k, v in (metadata or {}).items() if k.startswith(component + ".")}
        short = path.removeprefix("text_model.") if component == "text_encoder" else path
        if cfg.get("use_dora"):
            raise ValueError("DoRA LoRAs (use_dora=True) are not supported by latentdiff")
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), short, cfg.get("lora_alpha", r)))
        if cfg.get("use_rslora"):  # rsLoRA scales by α/√r; the same update with the α/r convention:
            alpha = alpha * math.sqrt(r)
        out[f"{module}.alpha"] = torch.tensor(alpha)
    return out


def detect_format(keys: Iterable[str]) -> str:
    """"kohya", "diffusers" (peft lora_A/lora_B keys) or "diffusers-legacy" (pre-peft diffusers keys)."""
    keys = list(keys)
    if not keys:
        raise ValueError("the LoRA file holds no tensors")
    if all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "diffusers"
    if any(re.search(r"(\.lora\.(up|down)\.|_lora\.(up|down)\.|lora_linear_layer)", k) for k in keys):
        return "diffusers-legacy"
    raise ValueError(f"not a LoRA file: no lora_A/lora_B (diffusers) or lora_down/lora_up (kohya) keys; "
                     f"first keys: {_short_list(sorted(keys), 5)}")


def _from_legacy_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pre-peft diffusers keys (``attn1.processor.to_q_lora.down.weight``, ``lora_linear_layer``)
    to peft keys, with diffusers' own key maps."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    unet = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    te = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    other = sorted(set(state) - {f"unet.{k}" for k in unet} - {f"text_encoder.{k}" for k in te})
    if other:
        raise ValueError(f"LoRA keys without a unet./text_encoder. prefix: {_short_list(other)}")
    out = {f"unet.{k}": v for k, v in convert_unet_state_dict_to_peft(unet).items()} if unet else {}
    if te:
        te = convert_state_dict_to_peft(convert_state_dict_to_diffusers(te))
        out.update({f"text_encoder.{k}": v for k, v in te.items()})
    return out
