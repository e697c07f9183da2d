"""LoRA on the models, through peft: the strict check that a LoRA fits a model before anything is
injected, adding trainable adapters, reading and restoring their weights, and the checks and quiet
loading the pipeline methods use. The only latentdiff code that imports peft."""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from latentdiff.lora.keys import _short_list, lora_modules


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
