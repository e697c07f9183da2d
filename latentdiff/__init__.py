"""latentdiff: Stable-Diffusion-style latent text-to-image diffusion.

>>> from latentdiff import TextToImagePipeline
>>> pipe = TextToImagePipeline.from_pretrained("emoji")
>>> pipe("red apple", seed=0).images[0].save("apple.png")
"""

from latentdiff._version import __version__


def __getattr__(name):
    # Lazy: `import latentdiff` stays cheap (the CLI's --help must not import torch/diffusers).
    if name in ("TextToImagePipeline", "PipelineOutput"):
        from latentdiff.pipelines import text_to_image

        return getattr(text_to_image, name)
    raise AttributeError(f"module 'latentdiff' has no attribute {name!r}")


__all__ = ["TextToImagePipeline", "PipelineOutput", "__version__"]
