"""User-facing pipelines (installed as ``latentdiff.pipelines``)."""

from .text_to_image import PipelineOutput, TextToImagePipeline

__all__ = ["TextToImagePipeline", "PipelineOutput"]
