"""Composable prompts ("a AND b :0.5", A1111's AND; Liu et al. 2022): the split as A1111 reads it
(except that a prompt without AND is never weighted: "keycap: 9" is an emoji name), the guidance
formula eps_u + s * sum_k w_k (eps_k - eps_u) on the tiny U-Net against the parts evaluated one by
one, and the pipeline: weight-0 parts and padding change nothing, a prompt's image does not depend on
the other prompts of its batch, schedules work inside a part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentdiff.denoisers import ClassifierFreeGuidance, ComposableGuidance, UNetDenoiser, WeightedConds
from latentdiff.prompts import is_composable, split_and

KW = dict(num_inference_steps=4, guidance_scale=4.0, sampler="ddim", timestep_spacing="trailing", output_type="np")


@pytest.mark.parametrize("prompt, parts", [
    ("red apple", [("red apple", 1.0)]),
    ("keycap: 9", [("keycap: 9", 1.0)]),          # no AND: never a weight (A1111 would read weight 9)
    ("a ANDb", [("a ANDb", 1.0)]),                # AND only as a whole word
    ("cat AND dog", [("cat", 1.0), (" dog", 1.0)]),
    ("cat :1.5 AND dog:-0.5", [("cat", 1.5), (" dog", -0.5)]),
    ("keycap: 9 :1 AND (fog:0.7) AND x : .5", [("keycap: 9", 1.0), (" (fog:0.7)", 1.0), (" x", 0.5)]),
    ("a AND", [("a", 1.0), ("", 1.0)]),
])
def test_split_and_as_a1111_reads_it(prompt, parts):
    assert split_and(prompt) == parts
    assert is_composable(prompt) == (len(parts) > 1)


def test_guidance_formula_on_the_tiny_unet(tiny_pipe):
    torch.manual_seed(0)
    unet = UNetDenoiser(tiny_pipe.unet, tiny_pipe.alphas_cumprod)
    enc = tiny_pipe.encode_prompt(["red heart", "blue square", "cat", "", "sun", "moon"])
    c1, c2, u = enc[:2], enc[2:4], enc[4:]
    w = torch.tensor([[1.5, -0.5], [0.3, 0.0]])  # the second prompt's second part is padding
    x = torch.randn(2, tiny_pipe.unet.config.in_channels, 8, 8)
    t = torch.tensor([500, 500])
    got = ComposableGuidance(unet, WeightedConds([c1, c2], w), u, 3.0)(x, t)
    with torch.no_grad():
        eps = [torch.cat([unet(x[i:i + 1], t[i:i + 1], cond=c[i:i + 1]) for i in range(2)]) for c in (u, c1, c2)]
    want = eps[0] + 3.0 * (w[:, :1, None, None] * (eps[1] - eps[0]) + w[:, 1:, None, None] * (eps[2] - eps[0]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - eps[0]).abs().max() > 1e-3  # the guidance did something
    # one part of weight 1 is classifier-free guidance, bit for bit
    one = ComposableGuidance(unet, WeightedConds([c1], torch.ones(2, 1)), u, 3.0)(x, t)
    assert torch.equal(one, ClassifierFreeGuidance(unet, c1, u, 3.0)(x, t))
    with pytest.raises(ValueError, match="do not match 2 conditionings"):
        WeightedConds([c1, c2], torch.ones(2, 3))


def test_pipeline_and(tiny_pipe):
    red = tiny_pipe("red heart", seed=3, **KW).images
    # a part of weight 0 changes nothing; not bit for bit, since it makes the U-Net batch 3 rows instead of
    # 2 and BLAS may round those differently (7e-7 on session 14's Intel Xeon, 0 on the earlier AMD EPYC)
    np.testing.assert_allclose(tiny_pipe("red heart AND blue square :0", seed=3, **KW).images, red, atol=1e-5, rtol=0)
    mixed = "blue square :1.5 AND red heart :-0.5"
    alone = tiny_pipe(mixed, seed=4, **KW).images
    assert np.abs(alone - tiny_pipe("blue square", seed=4, **KW).images).max() > 1e-4
    batch = tiny_pipe(["red heart", mixed], seed=[3, 4], **KW).images  # padded to two parts
    np.testing.assert_allclose(batch[0], red[0], atol=1e-5)
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)
    # schedules inside a part: "[red:blue:0] heart" is "blue heart" from the first step
    np.testing.assert_allclose(tiny_pipe("[red:blue:0] heart AND sun :0.5", seed=3, **KW).images,
                               tiny_pipe("blue heart AND sun :0.5", seed=3, **KW).images, atol=1e-6)
    with pytest.raises(ValueError, match="guidance_rescale is not defined for composable prompts"):
        tiny_pipe("a AND b", seed=0, guidance_rescale=0.7, **KW)
    # at guidance 1 the parts still guide from the negative prompt, so a negative is not refused there
    one = {**KW, "guidance_scale": 1.0}
    plain = tiny_pipe("red heart :1.5 AND sun :0.5", seed=3, **one).images  # weights summing to 1 would cancel it
    assert np.abs(plain - tiny_pipe("red heart :1.5 AND sun :0.5", "blue", seed=3, **one).images).max() > 1e-5
    with pytest.raises(ValueError, match="negative_prompt has no effect with guidance_scale=1"):
        tiny_pipe("red heart", "blue", seed=3, **one)
