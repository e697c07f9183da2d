"""LoRA for the text-to-image pipeline (peft is imported only here)."""


class LoraMixin:
    """LoRA loading methods of TextToImagePipeline (load_lora, fuse/unfuse, ...)."""
