"""LoRA for the text-to-image pipeline, by concern:

- :mod:`latentdiff.lora.keys`: LoRA states and their key formats (kohya, pre-peft diffusers, LoraConfig);
- :mod:`latentdiff.lora.files`: finding, reading and writing LoRA files;
- :mod:`latentdiff.lora.layers`: peft on the models (strict matching, adding, reading, restoring adapters);
- :mod:`latentdiff.lora.mixin`: the pipeline's methods (load, scale, fuse, unload).

Every public name is importable from ``latentdiff.lora``.

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

from latentdiff.fs import LORA_WEIGHT_NAME
from latentdiff.fs import save_safetensors_atomic as _save_safetensors_atomic  # noqa: F401 (tests/test_pipeline.py)
from latentdiff.lora.files import (
    LoraFile,
    read_lora,
    resolve_lora_file,
    save_kohya,
    save_lora,
    save_lora_state,
)
from latentdiff.lora.keys import (
    COMPONENTS,
    KOHYA_PREFIXES,
    LORA_ADAPTER_METADATA_KEY,
    TEXT_ENCODER_ATTENTION_TARGETS,
    TEXT_ENCODER_MLP_TARGETS,
    TRAINING_METADATA_KEY,
    UNET_ATTENTION_TARGETS,
    UNET_CONV_TARGETS,
    UNET_FF_TARGETS,
    detect_format,
    from_kohya,
    kohya_name,
    lora_config_dict,
    lora_modules,
    lora_rank,
    module_from_kohya_name,
    to_kohya,
)
from latentdiff.lora.layers import (
    add_lora,
    base_state_dict,
    get_lora_state,
    match_lora,
    set_lora_state,
    target_module_names,
)
from latentdiff.lora.mixin import LoadedLora, LoraMixin

__all__ = [
    "COMPONENTS", "KOHYA_PREFIXES", "LORA_ADAPTER_METADATA_KEY", "LORA_WEIGHT_NAME", "TEXT_ENCODER_ATTENTION_TARGETS",
    "TEXT_ENCODER_MLP_TARGETS", "TRAINING_METADATA_KEY", "UNET_ATTENTION_TARGETS", "UNET_CONV_TARGETS",
    "UNET_FF_TARGETS", "LoadedLora", "LoraFile", "LoraMixin", "add_lora", "base_state_dict", "detect_format",
    "from_kohya", "get_lora_state", "kohya_name", "lora_config_dict", "lora_modules", "lora_rank", "match_lora",
    "module_from_kohya_name", "read_lora", "resolve_lora_file", "save_kohya", "save_lora", "save_lora_state",
    "set_lora_state", "target_module_names", "to_kohya",
]
