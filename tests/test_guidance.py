"""Classifier-free guidance and classifier guidance wrappers."""

import math

import pytest
import torch

from latentdiff.denoisers import ClassifierFreeGuidance, ClassifierGuidance, Conditioned, EpsFunction
from latentdiff.diffusion import alphas_cumprod_at, make_alphas_cumprod, make_timesteps
from latentdiff.samplers import SAMPLERS, sample_ddim

AC = make_alphas_cumprod("linear", 1000, 1e-4, 0.02)


class CondToy:
    """ε depends on the conditioning: ε = tanh(x) + cond.mean(). Counts forward calls."""

    def __init__(self):
        self.alphas_cumprod, self.calls = AC, 0

    def __call__(self, x, t, *, cond):
        self.calls += 1
        return torch.tanh(x) + cond.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


def test_cfg_scale_one_is_conditional():
    inner, x, t = CondToy(), torch.randn(3, 4, 8, 8), torch.full((3,), 500)
    cond, uncond = torch.randn(3, 77, 16), torch.randn(3, 77, 16)
    torch.testing.assert_close(ClassifierFreeGuidance(inner, cond, uncond, 1.0)(x, t), Conditioned(inner, cond)(x, t))


@pytest.mark.parametrize("w", [0.0, 2.0, 7.5])
def test_cfg_formula_and_single_batched_forward(w):
    inner, x, t = CondToy(), torch.randn(3, 4, 8, 8), torch.full((3,), 500)
    cond, uncond = torch.randn(3, 77, 16), torch.randn(3, 77, 16)
    out = ClassifierFreeGuidance(inner, cond, uncond, w)(x, t)
    assert inner.calls == 1
    e_c, e_u = inner(x, t, cond=cond), inner(x, t, cond=uncond)
    torch.testing.assert_close(out, e_u + w * (e_c - e_u))


def test_guidance_rescale_matches_diffusers():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    inner, x, t = CondToy(), torch.randn(2, 4, 8, 8), torch.full((2,), 300)
    cond, uncond = torch.randn(2, 77, 16), torch.randn(2, 77, 16)
    out = ClassifierFreeGuidance(inner, cond, uncond, 5.0, guidance_rescale=0.7)(x, t)
    e_c, e_u = inner(x, t, cond=cond), inner(x, t, cond=uncond)
    ref = rescale_noise_cfg(e_u + 5.0 * (e_c - e_u), e_c, guidance_rescale=0.7)
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------- classifier guidance, analytic classifier

MU = 2.0  # data: y=0 → N(-MU, s2), y=1 → N(+MU, s2), equal priors (1-D, shape (B, 1))
S2 = 0.1


def noisy_logits(x, t):
    """log p(y | x_t) for the noised two-Gaussian mixture, in closed form."""
    a = alphas_cumprod_at(AC, t.reshape(-1)[:1]).item()  # fractional t too (Heun, DPM2, ... midpoints)
    var = a * S2 + 1 - a
    m = math.sqrt(a) * MU
    return torch.stack([-(x[:, 0] + m) ** 2, -(x[:, 0] - m) ** 2], dim=1) / (2 * var)


def exact_uncond_eps(x, t):
    a = alphas_cumprod_at(AC, t.reshape(-1)[:1]).item()  # fractional t too (Heun, DPM2, ... midpoints)
    var = a * S2 + 1 - a
    r = torch.softmax(noisy_logits(x, t), dim=1)
    m = math.sqrt(a) * MU
    mean = r[:, 1:] * m - r[:, :1] * m
    return math.sqrt(1 - a) * (x - mean) / var


def log_p_class1(x, t):
    return torch.log_softmax(noisy_logits(x, t), dim=1)[:, 1]


def test_classifier_guidance_equals_formula():
    base = EpsFunction(exact_uncond_eps, AC)
    x = torch.randn(5, 1, dtype=torch.float64)
    t = torch.full((5,), 600)
    s = 3.0
    guided = ClassifierGuidance(base, log_p_class1, s)(x, t)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_p_class1(xr, t).sum(), xr)
    expected = exact_uncond_eps(x, t) - s * math.sqrt(1 - AC[600].item()) * grad
    torch.testing.assert_close(guided, expected)
    # the gradient points toward class 1 (x → +MU): guided ε̂ is smaller where it pulls x up
    assert torch.all(grad > 0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_classifier_guidance_moves_samples_to_class(name):
    """With the exact unconditional ε and the exact classifier at scale 1, sampling yields p(x | y=1)."""
    x = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = make_timesteps(50, 1000, "trailing")
    base = EpsFunction(exact_uncond_eps, AC)
    plain = SAMPLERS[name](base, x, ts, generator=torch.Generator().manual_seed(1))
    guided = SAMPLERS[name](ClassifierGuidance(base, log_p_class1, 1.0), x, ts,
                            generator=torch.Generator().manual_seed(1))
    share_plain = (plain[:, 0] > 0).double().mean().item()
    share_guided = (guided[:, 0] > 0).double().mean().item()
    assert abs(share_plain - 0.5) < 0.05
    assert share_guided > 0.97, share_guided
    assert abs(guided[guided[:, 0] > 0, 0].mean().item() - MU) < 0.1


def test_classifier_guidance_composes_with_cfg_and_scale_schedule():
    inner = CondToy()
    cond, uncond = torch.randn(2, 77, 16), torch.randn(2, 77, 16)
    cfg = ClassifierFreeGuidance(inner, cond, uncond, 4.0)

    def log_p(x, t):
        return -(x - 1).pow(2).flatten(1).sum(1)

    x, t = torch.randn(2, 4, 8, 8), torch.full((2,), 700)
    g = ClassifierGuidance(cfg, log_p, lambda step: 0.0 if step > 500 else 2.0)
    torch.testing.assert_close(g(x, t), cfg(x, t))  # schedule gives 0 at t=700
    t2 = torch.full((2,), 100)
    expected = cfg(x, t2) - 2.0 * math.sqrt(1 - AC[100].item()) * (-2 * (x - 1))
    torch.testing.assert_close(g(x, t2), expected, rtol=1e-5, atol=1e-5)
    out = sample_ddim(g, x, make_timesteps(5, 1000, "trailing"))
    assert torch.isfinite(out).all()
