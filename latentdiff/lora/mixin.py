"""The LoRA methods of :class:`~latentdiff.pipelines.TextToImagePipeline`: load, scale, activate,
fuse, disable and unload adapters, with diffusers' PEFT integration doing the layer work."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from latentdiff.fs import LORA_WEIGHT_NAME
from latentdiff.lora.files import read_lora
from latentdiff.lora.keys import COMPONENTS, lora_config_dict, lora_rank
from latentdiff.lora.layers import _adapted_base_weights, _check_loaded, _quiet_loaders, match_lora

logger = logging.getLogger("latentdiff")



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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loras: dict[str, LoadedLora] = {}  # every loaded adapter, by name
        self._lora_active: list[str] = []  # the adapters that apply, each at its scale
        self._lora_enabled = True  # False: disable_lora() runs the base model
        self._lora_fused: list[str] | None = None  # the adapters merged into the weights by fuse_lora()
        self._lora_unfused_weights: dict[str, list[torch.Tensor]] = {}  # the base weights before that merge

    def _lora_models(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def _require_unfused(self, what: str) -> None:
        if self._loras and self._lora_fused:
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
        self._apply_lora_scales([*self._lora_active, adapter_name])
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
            set_adapter_layers(model, enabled=self._lora_enabled)
        self._lora_active = active

    def set_lora_scale(self, adapter_name: str, scale: float) -> None:
        """Change one adapter's weight s (0 switches it off; the others keep theirs)."""
        self._require_unfused("change a LoRA scale")
        self._require_loaded([adapter_name])
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"LoRA scale must be a finite number, got {scale!r}")
        self._loras[adapter_name].scale = float(scale)
        self._apply_lora_scales(self._lora_active)

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
        active = self._lora_active
        return {n: {"source": a.source, "scale": a.scale, "active": n in active, "components": list(a.components),
                    "rank": a.rank, "format": a.format, "training": a.training} for n, a in self._loras.items()}

    def fuse_lora(self, adapter_names: Sequence[str] | None = None) -> None:
        """Merge the active adapters (or ``adapter_names``) into the base weights at their scales,
        W ← W + s (α/r) B A, so sampling costs nothing extra. :meth:`unfuse_lora` subtracts it again."""
        from diffusers.loaders.lora_base import fuse_text_encoder_lora

        self._require_unfused("fuse again")
        if not self._loras:
            raise ValueError("no LoRA is loaded; load_lora() first")
        names = list(adapter_names) if adapter_names is not None else list(self._lora_active)
        self._require_loaded(names)
        if not self._lora_enabled:
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
        self._lora_fused = names
        self._lora_unfused_weights = originals

    def unfuse_lora(self) -> None:
        """Undo :meth:`fuse_lora`: peft subtracts the merged update (W - s (α/r) B A, exact only up to
        float rounding), then the base weights saved at fuse time are copied back, so they are
        bit-identical to before the fuse."""
        from diffusers.loaders.lora_base import unfuse_text_encoder_lora

        if not self._loras or not self._lora_fused:
            return
        fused = self._lora_fused
        originals, self._lora_unfused_weights = self._lora_unfused_weights, {}
        for component, model in self._lora_models().items():
            if any(component in self._loras[n].components for n in fused):
                model.unfuse_lora() if component == "unet" else unfuse_text_encoder_lora(model)
                with torch.no_grad():
                    for param, saved in zip(_adapted_base_weights(model, copy=False), originals.get(component, [])):
                        param.copy_(saved)
        self._lora_fused = None

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
        self._lora_enabled = enabled
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
        from diffusers.utils import recurse_remove_peft_layers

        if not self._loras:
            return
        self.unfuse_lora()
        names = list(self._loras) if adapter_name is None else [adapter_name]
        self._require_loaded(names)
        if adapter_name is None or len(self._loras) == 1:
            if any("unet" in a.components for a in self._loras.values()):
                self.unet.unload_lora()
            if any("text_encoder" in a.components for a in self._loras.values()):
                # what UNet2DConditionModel.unload_lora does, for the text encoder (diffusers has no public
                # function for it): the original modules back, and transformers' PEFT bookkeeping reset
                recurse_remove_peft_layers(self.text_encoder)
                if hasattr(self.text_encoder, "peft_config"):
                    del self.text_encoder.peft_config
                self.text_encoder._hf_peft_config_loaded = None
            self._loras.clear()
            self._lora_active = []
            self._lora_enabled = True
            return
        info = self._loras.pop(adapter_name)
        self._delete_adapter_layers(adapter_name, info.components)
        active = [n for n in self._lora_active if n != adapter_name]
        self._apply_lora_scales(active)
