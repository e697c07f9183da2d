"""LoRA for the text-to-image pipeline: files, conversions, loading, training helpers.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3) freezes a
weight W (out × in) and learns a low-rank update:

    W' = W + (α / r) · B A,     A: (r × in), B: (out × r), B initialised to 0

so a fine-tune is a few small matrices per adapted layer. For a Conv2d, A is a conv with the
layer's kernel (r output channels) and B a 1×1 conv, as in peft and kohya.

peft does the layers (this is the only latentdiff module that imports peft); diffusers' PEFT
integration (``UNet2DConditionModel.load_lora_adapter``, ``set_adapters``, ``fuse_lora``, ...)
and its text-encoder helpers drive them, so a LoRA behaves exactly as in diffusers.

Two file formats, one in-memory form
------------------------------------
*diffusers* (``pytorch_lora_weights.safetensors``, what ``StableDiffusionPipeline.save_lora_weights``
writes and ``load_lora_weights`` reads)::

    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight   (r, in)
    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight   (out, r)
    text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight
    header "lora_adapter_metadata": {"unet.r": 4, "unet.lora_alpha": 4, "unet.target_modules": [...], ...}

*kohya* (kohya-ss sd-scripts, read by AUTOMATIC1111, ComfyUI and diffusers)::

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight  (= A)
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight    (= B)
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha             (α, a scalar)
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight

In memory a *LoRA state* is the diffusers key layout plus one 0-d ``<component>.<module>.alpha``
tensor per module, so it is self-describing and converts both ways without loss
(:func:`to_kohya`, :func:`from_kohya`). Text-encoder module names keep the ``text_model.``
prefix every SD 1.x LoRA uses; it is dropped when the model (transformers ≥ 5) has none.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from latentdiff import hub
from latentdiff.fs import LORA_WEIGHT_NAME, PICKLE_SUFFIXES, check_safetensors_file, is_repo_id, save_safetensors_atomic
from latentdiff.io import resolve_model_dir

_save_safetensors_atomic = save_safetensors_atomic  # the name tests/test_pipeline.py uses

logger = logging.getLogger("latentdiff")

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


# ----------------------------------------------------------------------------------------------
# LoRA states: naming helpers and format conversions
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


@dataclass
class LoraFile:
    """A LoRA read from disk: its state (diffusers keys + ``.alpha``), where and in what format it was."""

    state: dict[str, torch.Tensor]
    path: Path
    format: str  # "diffusers" | "kohya" | "diffusers-legacy"
    training: dict = field(default_factory=dict)  # our training metadata (base model, rank, alpha, ...)
    header: dict = field(default_factory=dict)  # the raw safetensors header metadata


def resolve_lora_file(path_or_repo_id: str | os.PathLike, weight_name: str | None = None, *,
                      revision: str | None = None) -> Path:
    """The ``.safetensors`` file for a file path, a folder (``pytorch_lora_weights.safetensors``, or its
    only ``.safetensors``) or a Hub repo id. Pickled LoRAs (.bin/.pt/.ckpt) are refused."""
    path = Path(path_or_repo_id).expanduser()
    if not path.exists() and weight_name is not None and is_repo_id(str(path_or_repo_id)):
        path = hub.download_file(  # just the one file of the repo
            str(path_or_repo_id), weight_name, revision=revision, kind="LoRA")
    elif not path.exists():
        path = resolve_model_dir(str(path_or_repo_id), revision=revision, kind="LoRA")
    if path.is_dir():
        if weight_name is not None:
            path = path / weight_name
        elif (path / LORA_WEIGHT_NAME).is_file():
            path = path / LORA_WEIGHT_NAME
        else:
            candidates = sorted(path.glob("*.safetensors"))
            if len(candidates) != 1:
                raise FileNotFoundError(
                    f"{path} has {'no' if not candidates else len(candidates)} .safetensors files and no "
                    f"{LORA_WEIGHT_NAME}; pass weight_name= (--lora FOLDER/FILE.safetensors) to choose"
                    + (f" among {', '.join(c.name for c in candidates)}" if candidates else ""))
            path = candidates[0]
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} not found")
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle, which can run arbitrary code when loaded; latentdiff loads "
                         "LoRAs in safetensors only (convert it, e.g. with safetensors.torch.save_file)")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors LoRA file")
    return path


def read_lora(path_or_repo_id: str | os.PathLike, weight_name: str | None = None, *,
              revision: str | None = None) -> LoraFile:
    """Read a diffusers- or kohya-format LoRA file (format detected from its keys) into a LoRA state."""
    from safetensors import safe_open

    path = resolve_lora_file(path_or_repo_id, weight_name, revision=revision)
    check_safetensors_file(path)
    with safe_open(str(path), framework="pt") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}
        header = dict(f.metadata() or {})
    fmt = detect_format(raw)
    if fmt == "kohya":
        state = from_kohya(raw)
    else:
        if fmt == "diffusers-legacy":
            raw = _from_legacy_diffusers(raw)
        bad = sorted(k for k in raw if _split_key(k)[2] not in ("lora_A.weight", "lora_B.weight"))
        if bad:
            raise ValueError(f"{path}: {len(bad)} key(s) are not LoRA lora_A/lora_B weights (DoRA magnitudes, "
                             f"LoRA biases and other extras are not supported): {_short_list(bad)}")
        metadata = json.loads(header[LORA_ADAPTER_METADATA_KEY]) if LORA_ADAPTER_METADATA_KEY in header else None
        state = _alphas_from_metadata(raw, metadata)
    training = {}
    if TRAINING_METADATA_KEY in header:
        try:
            training = json.loads(header[TRAINING_METADATA_KEY])
        except json.JSONDecodeError:
            logger.warning("%s: unreadable %r metadata ignored", path, TRAINING_METADATA_KEY)
    return LoraFile(state, path, fmt, training, header)


def _lora_path(dir_or_file: str | os.PathLike, default_name: str) -> Path:
    p = Path(dir_or_file)
    return p if p.suffix == ".safetensors" else p / default_name


def _prefixed(component: str, state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Component-level keys (``<module>.lora_A.weight``) -> pipeline-level ones (``unet.<module>...``);
    text-encoder modules get the canonical ``text_model.`` prefix."""
    out = {}
    for key, value in (state or {}).items():
        if key.startswith(component + "."):
            key = key[len(component) + 1:]
        if component == "text_encoder" and not key.startswith("text_model."):
            key = "text_model." + key
        out[f"{component}.{key}"] = value
    return out


def _check_state(state: dict[str, torch.Tensor]) -> None:
    """Internal consistency of a LoRA state: every module has A and B, ranks agree, rank >= 1."""
    problems = []
    for module, parts in lora_modules(state).items():
        a, b = parts.get("lora_A.weight"), parts.get("lora_B.weight")
        if a is None or b is None or set(parts) - {"lora_A.weight", "lora_B.weight", "alpha"}:
            problems.append(f"{module}: has {sorted(parts)}, needs lora_A.weight and lora_B.weight")
        elif a.shape[0] < 1 or a.shape[0] != b.shape[1]:
            problems.append(f"{module}: lora_A rows {a.shape[0]} and lora_B columns {b.shape[1]} must be the same rank >= 1")
    if problems:
        raise ValueError(f"invalid LoRA state: {_short_list(problems)}")


def save_lora(dir_or_file: str | os.PathLike, unet_lora_state: dict[str, torch.Tensor] | None,
              text_encoder_lora_state: dict[str, torch.Tensor] | None = None, *,
              metadata: dict | None = None, dropout: float = 0.0) -> Path:
    """Write a LoRA in the diffusers format, atomically; returns the file path.

    ``dir_or_file``: a folder (the file is ``pytorch_lora_weights.safetensors`` in it, what
    ``load_lora_weights(folder)`` looks for) or a ``*.safetensors`` path. The states are per component
    (``<module>.lora_A.weight``, ``<module>.lora_B.weight``, optional 0-d ``<module>.alpha``), e.g. from
    :func:`get_lora_state`. The header carries diffusers' ``lora_adapter_metadata`` (the LoraConfig:
    rank, alpha, target modules; diffusers ≥ 0.34 reads it) and ``metadata`` (JSON under ``latentdiff``:
    base model, rank, alpha, prompts, steps, ...)."""
    state = {**_prefixed("unet", unet_lora_state), **_prefixed("text_encoder", text_encoder_lora_state)}
    if not state:
        raise ValueError("nothing to save: pass a non-empty unet_lora_state and/or text_encoder_lora_state")
    return save_lora_state(dir_or_file, state, metadata=metadata, dropout=dropout)


def save_lora_state(dir_or_file: str | os.PathLike, state: dict[str, torch.Tensor], *,
                    metadata: dict | None = None, dropout: float = 0.0) -> Path:
    """:func:`save_lora` for a pipeline-level LoRA state (``unet.``/``text_encoder.`` keys + ``.alpha``)."""
    _check_state(state)
    weights = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    config = {}
    for component in COMPONENTS:
        if any(k.startswith(component + ".") for k in weights):
            config.update({f"{component}.{k}": v for k, v in lora_config_dict(state, component, dropout).items()})
    header = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}
    if metadata:
        header[TRAINING_METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str)
    path = _lora_path(dir_or_file, LORA_WEIGHT_NAME)
    save_safetensors_atomic(weights, path, header)
    return path


def save_kohya(dir_or_file: str | os.PathLike, state: dict[str, torch.Tensor], *, metadata: dict | None = None,
               name: str = "lora") -> Path:
    """Write a LoRA state in the kohya format (AUTOMATIC1111 ``models/Lora/``, ComfyUI ``models/loras/``).
    The header has kohya's ``ss_network_*`` fields (shown by A1111) and our ``latentdiff`` JSON."""
    _check_state(state)
    kohya = to_kohya(state)
    ranks = sorted(set(lora_rank(state).values()))
    alphas = sorted({float(v) for k, v in kohya.items() if k.endswith(".alpha")})
    header = {"format": "pt", "ss_network_module": "networks.lora", "ss_output_name": name,
              "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else "dynamic",
              "ss_network_alpha": f"{alphas[0]:g}" if len(alphas) == 1 else "dynamic"}
    if metadata:
        header[TRAINING_METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str)
    path = _lora_path(dir_or_file, f"{name}.safetensors")
    save_safetensors_atomic(kohya, path, header)
    return path


# ----------------------------------------------------------------------------------------------
# Matching a LoRA to a model (strict), and training helpers
# ----------------------------------------------------------------------------------------------


def _base_layer(module: torch.nn.Module) -> torch.nn.Module:
    get = getattr(module, "get_base_layer", None)
    return get() if callable(get) else module


def _model_path(component: str, path: str, model: torch.nn.Module) -> str:
    """The module path in ``model``: CLIPTextModel lost its ``text_model`` level in transformers 5."""
    if component == "text_encoder":
        has = hasattr(model, "text_model")
        if has and not path.startswith("text_model."):
            return "text_model." + path
        if not has:
            return path.removeprefix("text_model.")
    return path


def match_lora(state: dict[str, torch.Tensor], models: dict[str, torch.nn.Module | None]) -> None:
    """Check that every module of a LoRA state exists in ``models`` ({"unet": ..., "text_encoder": ...})
    as a Linear/Conv2d whose shape fits A and B. A ValueError lists every key that does not match
    (another architecture, another rank layout); nothing is loaded partially."""
    modules = lora_modules(state)
    named = {c: dict(m.named_modules()) for c, m in models.items() if m is not None}
    problems = []
    for module, parts in modules.items():
        component, _, path = module.partition(".")
        keys = ", ".join(f"{module}.{p}" for p in sorted(parts))
        if component not in named:
            allowed = " or ".join(f"{c}." for c in named)
            problems.append(f"{keys}: unknown component {component!r} (LoRA keys start with {allowed})")
            continue
        a, b = parts.get("lora_A.weight"), parts.get("lora_B.weight")
        if a is None or b is None or set(parts) - {"lora_A.weight", "lora_B.weight", "alpha"}:
            problems.append(f"{keys}: needs exactly lora_A.weight, lora_B.weight (and optionally alpha)")
            continue
        target = named[component].get(_model_path(component, path, models[component]))
        if target is None:
            problems.append(f"{keys}: the {component} has no module {path!r}")
            continue
        layer = _base_layer(target)
        r = a.shape[0]
        if r < 1 or b.ndim < 2 or b.shape[1] != r:
            problems.append(f"{keys}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} disagree on the rank")
        elif isinstance(layer, torch.nn.Linear):
            want_a, want_b = (r, layer.in_features), (layer.out_features, r)
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                problems.append(f"{keys}: shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit the Linear "
                                f"{layer.in_features}->{layer.out_features} (need {want_a}/{want_b})")
        elif isinstance(layer, torch.nn.Conv2d):
            want_a = (r, layer.in_channels // layer.groups, *layer.kernel_size)
            want_b = (layer.out_channels, r, 1, 1)
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                problems.append(f"{keys}: shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit the Conv2d "
                                f"(need {want_a}/{want_b})")
        else:
            problems.append(f"{keys}: {path!r} is a {type(layer).__name__}; LoRA applies to Linear and Conv2d")
    if problems:
        raise ValueError(
            f"this LoRA does not match the model: {len(problems)} of {len(modules)} module(s) have unmatched keys "
            "(was it trained for another architecture or base model?):\n  " + "\n  ".join(problems[:40])
            + (f"\n  ... ({len(problems) - 40} more)" if len(problems) > 40 else ""))


def target_module_names(model: torch.nn.Module, suffixes: Sequence[str]) -> list[str]:
    """Full names of the Linear/Conv2d modules of ``model`` whose dotted name ends with one of
    ``suffixes`` (e.g. UNET_ATTENTION_TARGETS)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
             and any(n == s or n.endswith("." + s) for s in suffixes)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear/Conv2d module named like {', '.join(suffixes)}")
    return names


def add_lora(model: torch.nn.Module, target_modules: Sequence[str], *, rank: int, alpha: float | None = None,
             dropout: float = 0.0, adapter_name: str = "default", seed: int | None = None) -> list[torch.nn.Parameter]:
    """Wrap ``target_modules`` of ``model`` (a diffusers UNet or a transformers CLIPTextModel) in
    trainable peft LoRA layers: A Kaiming-uniform, B = 0, so the model is unchanged at step 0
    (Hu et al. 2021 §4.1). The base weights stay frozen. Returns the LoRA parameters."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if alpha <= 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha} (the update is scaled by alpha/rank)")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=True,
                        target_modules=list(target_modules))
    model.requires_grad_(False)
    if seed is not None:
        torch.manual_seed(seed)
    # peft's own API, not diffusers'/transformers' ``add_adapter``: transformers gates its PEFT
    # integration on a peft version (5.24 asks for peft >= 0.22, newer than PyPI had on 2026-12-01),
    # and a version gate in a wrapper must not break text-encoder LoRA.
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    for module in model.modules():  # make the new adapter the active one, as add_adapter does
        if isinstance(module, BaseTunerLayer) and adapter_name in module.lora_A:
            module.set_adapter(adapter_name)
    params = [p for n, p in model.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    assert params, "peft injected no LoRA parameters"
    return params


def get_lora_state(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """One adapter of ``model`` as a component-level LoRA state (``<module>.lora_A.weight``,
    ``.lora_B.weight``, 0-d ``.alpha``), detached copies, ready for :func:`save_lora`."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            out[f"{name}.lora_A.weight"] = module.lora_A[adapter_name].weight.detach().clone()
            out[f"{name}.lora_B.weight"] = module.lora_B[adapter_name].weight.detach().clone()
            out[f"{name}.alpha"] = torch.tensor(float(module.lora_alpha[adapter_name]))
    if not out:
        raise ValueError(f"{type(model).__name__} has no LoRA adapter named {adapter_name!r}")
    return out


def _adapted_base_weights(model: torch.nn.Module, copy: bool = True) -> list[torch.Tensor]:
    """The base-layer weights of every LoRA-wrapped module (copies, or the parameters themselves)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            w = module.get_base_layer().weight
            out.append(w.detach().clone() if copy else w)
    return out


@contextlib.contextmanager
def _quiet_loaders():
    """Silence diffusers'/transformers' load reports and peft's multi-adapter warning while loading an
    adapter: they flag every *other* adapter's keys as missing (diffusers filters missing keys with
    ``adapter_name in key``, so a name like "b" matches "blocks"). :func:`_check_loaded` verifies instead."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    d, t = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
            yield
    finally:
        diffusers_logging.set_verbosity(d)
        transformers_logging.set_verbosity(t)


def _check_loaded(state: dict[str, torch.Tensor], models: dict[str, torch.nn.Module], adapter_name: str) -> None:
    """After loading: every module's A, B and α/r are exactly what the file holds (no partial load)."""
    named = {c: dict(m.named_modules()) for c, m in models.items()}
    for module, parts in lora_modules(state).items():
        component, _, path = module.partition(".")
        layer = named[component][_model_path(component, path, models[component])]
        a, b = parts["lora_A.weight"], parts["lora_B.weight"]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(a.shape[0])
        ok = (adapter_name in getattr(layer, "lora_A", {})
              and torch.equal(layer.lora_A[adapter_name].weight.detach().cpu(), a.to(layer.lora_A[adapter_name].weight.dtype))
              and torch.equal(layer.lora_B[adapter_name].weight.detach().cpu(), b.to(layer.lora_B[adapter_name].weight.dtype))
              and math.isclose(layer.lora_alpha[adapter_name] / layer.r[adapter_name], alpha / a.shape[0], rel_tol=1e-6))
        if not ok:  # a bug or an incompatible diffusers/peft version, not a user error
            raise RuntimeError(f"LoRA adapter {adapter_name!r} was not loaded exactly into {module}")


@torch.no_grad()
def set_lora_state(model: torch.nn.Module, state: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Copy a component-level LoRA state (as :func:`get_lora_state` returns) into ``model``'s existing
    adapter, exactly (used to restore training checkpoints). Every module must match, both ways."""
    have = get_lora_state(model, adapter_name)
    if set(have) != set(state):
        missing, extra = sorted(set(have) - set(state)), sorted(set(state) - set(have))
        raise ValueError(f"LoRA state does not match adapter {adapter_name!r}: missing {_short_list(missing)}; "
                         f"unexpected {_short_list(extra)}")
    modules = dict(model.named_modules())
    for key, value in state.items():
        path, _, part = key.rpartition(".lora_") if ".lora_" in key else (key[: -len(".alpha")], "", "alpha")
        layer = modules[path]
        if part == "alpha":
            if float(value) != float(layer.lora_alpha[adapter_name]):
                raise ValueError(f"{key}: alpha {float(value)} differs from the adapter's {layer.lora_alpha[adapter_name]}")
            continue
        target = (layer.lora_A if part.startswith("A") else layer.lora_B)[adapter_name].weight
        if target.shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} differs from the adapter's {tuple(target.shape)}")
        target.copy_(value)


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights under their original names, whether or not LoRA layers wrap them
    (``x.base_layer.weight`` -> ``x.weight``; adapter tensors left out)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


# ----------------------------------------------------------------------------------------------
# The pipeline methods
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedLora:
    """What the pipeline remembers about one loaded adapter."""

    name: str
    source: str
    scale: float
    components: tuple[str, ...]
    rank: int
    format: str
    training: dict = field(default_factory=dict)


class LoraMixin:
    """LoRA methods of :class:`~latentdiff.pipelines.TextToImagePipeline`.

    >>> pipe.load_lora("style.safetensors", adapter_name="style", scale=0.8)
    >>> pipe.load_lora("runs/lora/final", adapter_name="sks")
    >>> pipe.set_adapters(["style", "sks"], [0.5, 1.0])   # both active, each with its scale
    >>> pipe.fuse_lora(); ...; pipe.unfuse_lora()          # bake in for speed, and back
    >>> pipe.disable_lora(); pipe.enable_lora(); pipe.unload_lora()

    Several adapters add up: W' = W + Σ_i s_i (α_i/r_i) B_i A_i.
    """

    # state lives on the instance, created on first use (TextToImagePipeline.__init__ knows nothing of it)
    @property
    def _loras(self) -> dict[str, LoadedLora]:
        if "_lora_registry" not in self.__dict__:
            self.__dict__["_lora_registry"] = {}
            self.__dict__["_lora_fused"] = None
            self.__dict__["_lora_enabled"] = True
        return self.__dict__["_lora_registry"]

    def _lora_models(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def _require_unfused(self, what: str) -> None:
        if self._loras and self.__dict__.get("_lora_fused"):
            raise ValueError(f"cannot {what} while LoRAs are fused into the weights; call unfuse_lora() first")

    def _require_loaded(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self._loras]
        if unknown:
            raise ValueError(f"no LoRA adapter named {', '.join(map(repr, unknown))}; loaded: "
                             f"{', '.join(self._loras) or 'none'}")

    def load_lora(self, path_or_repo_id: str | os.PathLike, adapter_name: str | None = None, scale: float = 1.0,
                  weight_name: str | None = None, *, revision: str | None = None) -> str:
        """Load a LoRA (diffusers or kohya format, detected from its keys) from a ``.safetensors`` file,
        a folder with ``pytorch_lora_weights.safetensors`` or a Hub repo id, as an extra active adapter
        with weight ``scale``. Every key must match a module of this model (checked before anything is
        injected). Returns the adapter name (default: the file's stem, made unique)."""
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        self._require_unfused("load a LoRA")
        lora = read_lora(path_or_repo_id, weight_name, revision=revision)
        if adapter_name is None:
            stem = lora.path.parent.name if lora.path.name == LORA_WEIGHT_NAME else lora.path.stem
            adapter_name = base = re.sub(r"[^\w-]", "_", stem) or "lora"
            i = 1
            while adapter_name in self._loras:
                i += 1
                adapter_name = f"{base}_{i}"
        if adapter_name in self._loras:
            raise ValueError(f"a LoRA adapter named {adapter_name!r} is already loaded; pick another adapter_name "
                             "or unload_lora(name) first")
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"LoRA scale must be a finite number, got {scale!r}")
        match_lora(lora.state, self._lora_models())  # strict: before anything is injected

        components = tuple(c for c in COMPONENTS if any(k.startswith(c + ".") for k in lora.state))
        weights = {k: v for k, v in lora.state.items() if not k.endswith(".alpha")}
        metadata = {}
        for c in components:
            metadata.update({f"{c}.{k}": v for k, v in lora_config_dict(lora.state, c).items()})
        try:
            with _quiet_loaders():  # their missing-key reports list every other adapter's keys; we check below
                if "unet" in components:
                    StableDiffusionLoraLoaderMixin.load_lora_into_unet(
                        weights, network_alphas=None, unet=self.unet, adapter_name=adapter_name, metadata=metadata)
                if "text_encoder" in components:
                    StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(
                        weights, network_alphas=None, text_encoder=self.text_encoder, adapter_name=adapter_name,
                        metadata=metadata)
            _check_loaded(lora.state, self._lora_models(), adapter_name)
        except BaseException:  # leave no half-loaded adapter behind
            self._delete_adapter_layers(adapter_name, COMPONENTS)
            raise
        self._loras[adapter_name] = LoadedLora(adapter_name, str(lora.path), float(scale), components,
                                               max(lora_rank(lora.state).values()), lora.format, lora.training)
        self._apply_lora_scales([*self.__dict__.get("_lora_active", []), adapter_name])
        logger.info("Loaded LoRA %r (%s format, %s) from %s with scale %g", adapter_name, lora.format,
                    "+".join(components), lora.path, scale)
        return adapter_name

    def _apply_lora_scales(self, active: Sequence[str] | None = None) -> None:
        """Activate ``active`` adapters (default: all loaded) with their registered scales."""
        from diffusers.loaders.lora_base import set_adapters_for_text_encoder
        from diffusers.utils.peft_utils import set_adapter_layers

        active = list(self._loras) if active is None else list(active)
        for component, model in self._lora_models().items():
            names = [n for n in active if component in self._loras[n].components]
            if not any(component in a.components for a in self._loras.values()):
                continue
            weights = [self._loras[n].scale for n in names]
            if component == "unet":
                model.set_adapters(names, weights)
            else:
                set_adapters_for_text_encoder(names, model, weights)
            set_adapter_layers(model, enabled=self.__dict__["_lora_enabled"])
        self.__dict__["_lora_active"] = active

    def set_lora_scale(self, adapter_name: str, scale: float) -> None:
        """Change one adapter's weight s (0 switches it off; the others keep theirs)."""
        self._require_unfused("change a LoRA scale")
        self._require_loaded([adapter_name])
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"LoRA scale must be a finite number, got {scale!r}")
        self._loras[adapter_name].scale = float(scale)
        self._apply_lora_scales(self.__dict__.get("_lora_active"))

    def set_adapters(self, adapter_names: str | Sequence[str], weights: float | Sequence[float] | None = None) -> None:
        """Make exactly ``adapter_names`` active, with ``weights`` (one per adapter, a single number for
        all, or None to keep their current scales); the other loaded adapters are inactive."""
        self._require_unfused("change the active LoRAs")
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._require_loaded(names)
        if weights is not None:
            weights = [weights] * len(names) if isinstance(weights, (int, float)) else list(weights)
            if len(weights) != len(names):
                raise ValueError(f"{len(weights)} weights for {len(names)} adapters")
            for n, w in zip(names, weights):
                if not isinstance(w, (int, float)) or not math.isfinite(w):
                    raise ValueError(f"LoRA scale must be a finite number, got {w!r} for {n!r}")
                self._loras[n].scale = float(w)
        self._apply_lora_scales(names)

    def list_loras(self) -> dict[str, dict]:
        """{adapter name: {source, scale, active, components, rank, format, training}}."""
        active = self.__dict__.get("_lora_active") or []
        return {n: {"source": a.source, "scale": a.scale, "active": n in active, "components": list(a.components),
                    "rank": a.rank, "format": a.format, "training": a.training} for n, a in self._loras.items()}

    def fuse_lora(self, adapter_names: Sequence[str] | None = None) -> None:
        """Merge the active adapters (or ``adapter_names``) into the base weights at their scales,
        W ← W + s (α/r) B A, so sampling costs nothing extra. :meth:`unfuse_lora` subtracts it again."""
        from diffusers.loaders.lora_base import fuse_text_encoder_lora

        self._require_unfused("fuse again")
        if not self._loras:
            raise ValueError("no LoRA is loaded; load_lora() first")
        names = list(adapter_names) if adapter_names is not None else list(self.__dict__.get("_lora_active") or [])
        self._require_loaded(names)
        if not self.__dict__["_lora_enabled"]:
            raise ValueError("LoRAs are disabled; enable_lora() before fusing")
        originals = {}  # the base weights as they are now: unfuse_lora() restores them bit for bit
        for component, model in self._lora_models().items():
            sub = [n for n in names if component in self._loras[n].components]
            if not sub:
                continue
            originals[component] = _adapted_base_weights(model)
            if component == "unet":
                model.fuse_lora(lora_scale=1.0, adapter_names=sub)
            else:
                fuse_text_encoder_lora(model, lora_scale=1.0, adapter_names=sub)
        self.__dict__["_lora_fused"] = names
        self.__dict__["_lora_unfused_weights"] = originals

    def unfuse_lora(self) -> None:
        """Undo :meth:`fuse_lora`: peft subtracts the merged update (W - s (α/r) B A, exact only up to
        float rounding), then the base weights saved at fuse time are copied back, so they are
        bit-identical to before the fuse."""
        from diffusers.loaders.lora_base import unfuse_text_encoder_lora

        if not self._loras or not self.__dict__.get("_lora_fused"):
            return
        fused = self.__dict__["_lora_fused"]
        originals = self.__dict__.pop("_lora_unfused_weights", {})
        for component, model in self._lora_models().items():
            if any(component in self._loras[n].components for n in fused):
                model.unfuse_lora() if component == "unet" else unfuse_text_encoder_lora(model)
                with torch.no_grad():
                    for param, saved in zip(_adapted_base_weights(model, copy=False), originals.get(component, [])):
                        param.copy_(saved)
        self.__dict__["_lora_fused"] = None

    def disable_lora(self) -> None:
        """Run the base model, keeping the adapters loaded (undo with :meth:`enable_lora`)."""
        self._set_lora_enabled(False)

    def enable_lora(self) -> None:
        self._set_lora_enabled(True)

    def _set_lora_enabled(self, enabled: bool) -> None:
        from diffusers.utils.peft_utils import set_adapter_layers

        self._require_unfused("enable/disable LoRAs")
        if not self._loras:
            raise ValueError("no LoRA is loaded; load_lora() first")
        self.__dict__["_lora_enabled"] = enabled
        for component, model in self._lora_models().items():
            if any(component in a.components for a in self._loras.values()):
                set_adapter_layers(model, enabled=enabled)

    def _delete_adapter_layers(self, adapter_name: str, components: Sequence[str]) -> None:
        from diffusers.utils.peft_utils import delete_adapter_layers

        for component in components:
            model = self._lora_models()[component]
            if adapter_name in (getattr(model, "peft_config", None) or {}):
                delete_adapter_layers(model, adapter_name)
                model.peft_config.pop(adapter_name, None)

    def unload_lora(self, adapter_name: str | None = None) -> None:
        """Remove one adapter (or all), restoring the original modules. Fused adapters are unfused first."""
        from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch

        if not self._loras:
            return
        self.unfuse_lora()
        names = list(self._loras) if adapter_name is None else [adapter_name]
        self._require_loaded(names)
        if adapter_name is None or len(self._loras) == 1:
            if any("unet" in a.components for a in self._loras.values()):
                self.unet.unload_lora()
            if any("text_encoder" in a.components for a in self._loras.values()):
                _remove_text_encoder_monkey_patch(self.text_encoder)
            self._loras.clear()
            self.__dict__["_lora_active"] = []
            self.__dict__["_lora_enabled"] = True
            return
        info = self._loras.pop(adapter_name)
        self._delete_adapter_layers(adapter_name, info.components)
        active = [n for n in (self.__dict__.get("_lora_active") or []) if n != adapter_name]
        self._apply_lora_scales(active)
