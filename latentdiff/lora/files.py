"""LoRA files: finding one (a path, a folder, a Hub repo id), reading it in any supported format
into a LoRA state, and writing the diffusers and kohya formats atomically."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentdiff import hub
from latentdiff.fs import (
    LORA_WEIGHT_NAME,
    PICKLE_SUFFIXES,
    check_safetensors_file,
    is_repo_id,
    save_safetensors_atomic,
)
from latentdiff.io import resolve_model_dir
from latentdiff.lora.keys import (
    COMPONENTS,
    LORA_ADAPTER_METADATA_KEY,
    TRAINING_METADATA_KEY,
    _alphas_from_metadata,
    _from_legacy_diffusers,
    _short_list,
    _split_key,
    detect_format,
    from_kohya,
    lora_config_dict,
    lora_modules,
    lora_rank,
    to_kohya,
)

logger = logging.getLogger("latentdiff")



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
