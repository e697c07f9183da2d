"""compile=True: torch.compile of the U-Net and VAE decoder gives the eager images, is compiled once and
reused, and leaves the weights' names alone (save_pretrained, LoRA)."""

import numpy as np
import pytest
import torch

KW = dict(num_inference_steps=3, guidance_scale=3.0, output_type="np", seed=0)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_compiled_once_then_reused_same_images_same_weight_names(tiny_pipe):
    # backend "eager": Dynamo captures the graphs (the code path of compile=True) without Inductor's
    # minutes of C++ code generation on CPU; the Inductor numbers are the slow test below
    torch._dynamo.reset()
    eager = tiny_pipe(["red apple", "blue heart"], **KW).images
    keys = list(tiny_pipe.unet.state_dict())
    tiny_pipe.compile(backend="eager")
    assert tiny_pipe.compiled == "default"  # CPU: no CUDA graphs
    before = _graphs()
    first = tiny_pipe(["red apple", "blue heart"], **KW).images
    captured = _graphs()
    assert captured > before, "compile() must put the U-Net and VAE decoder through torch.compile"
    second = tiny_pipe(["red apple", "blue heart"], compile=True, **{**KW, "seed": 7}).images
    assert _graphs() == captured, "a second call with the same shapes must reuse the compiled graphs"
    np.testing.assert_allclose(first, eager, atol=1e-3)
    assert np.abs(second - first).max() > 1e-3  # (another seed, another image: the graphs are not cached outputs)
    assert list(tiny_pipe.unet.state_dict()) == keys, "compiling in place must not rename the weights"
    torch._dynamo.reset()


@pytest.mark.slow  # Inductor compiles C++ kernels: ~2 min on one loaded CPU core, ~7 s with its cache warm
def test_inductor_compiled_images_equal_eager(tiny_pipe):
    torch._dynamo.reset()
    eager = tiny_pipe("red apple", **KW).images
    compiled = tiny_pipe("red apple", compile=True, **KW).images
    assert tiny_pipe.compiled == "default"
    np.testing.assert_allclose(compiled, eager, atol=1e-3)
    torch._dynamo.reset()


def test_unknown_compile_mode_is_refused_before_compiling(tiny_pipe):
    with pytest.raises(ValueError, match="compile mode must be one of default, lite, reduce-overhead"):
        tiny_pipe("red apple", compile="fastest", **KW)
    assert tiny_pipe.compiled is None
