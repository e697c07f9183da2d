"""Samplers: stateless functions of (denoiser, x, timesteps, generator).

A *denoiser* is any callable ``denoiser(x_t, t) -> eps`` (ε-prediction, whatever the network
was trained on; see :mod:`latentdiff.denoisers`) that carries the float64 table
``denoiser.alphas_cumprod``. ``timesteps`` is a decreasing sequence of integer training timesteps
(:func:`latentdiff.diffusion.make_timesteps`); each sampler steps from ``timesteps[i]`` to
``timesteps[i+1]`` and from the last one to the clean sample (ᾱ = 1).

Notation as in :mod:`latentdiff.diffusion`; for DPM-Solver, α_t = √ᾱ_t, σ_t = √(1-ᾱ_t),
λ_t = log(α_t/σ_t), h = λ_t - λ_s.

``generator`` is a torch.Generator or a list with one generator per batch element; noise for
image i is then drawn from generator i only, so an image does not depend on its batch-mates.
``callback``, if given, is called after every step with a dict
``{"i": step index, "t": timestep, "x": new sample, "denoised": x̂0 of this step}``; if it returns a
tensor, that tensor replaces the sample (diffusers' ``callback_on_step_end`` contract: this is how
inpainting puts the noised known region back after every step, as diffusers' inpaint pipeline does,
without any sampler knowing about masks).
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from .diffusion import predict_x0_from_eps, q_posterior_mean_variance, randn


class Denoiser(Protocol):
    alphas_cumprod: torch.Tensor

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None] | None


def _schedule(denoiser: Denoiser, timesteps, final_alpha_cumprod: float = 1.0):
    """Yield (i, t, ᾱ_t, ᾱ_prev) for each step; ᾱ_prev of the last step is ``final_alpha_cumprod``."""
    ts = [int(t) for t in timesteps]
    if len(ts) < 1:
        raise ValueError("timesteps is empty: sampling needs at least one step")
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts}")
    ac = denoiser.alphas_cumprod.to(torch.float64)
    if ts[0] >= len(ac) or ts[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {len(ac) - 1}], got {ts[0]}..{ts[-1]}")
    for i, t in enumerate(ts):
        a_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else final_alpha_cumprod
        yield i, t, float(ac[t]), a_prev


def _t_tensor(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _after_step(callback: Callback, info: dict) -> torch.Tensor:
    """Report a step; the callback may return a replacement for the sample ``info["x"]``."""
    if callback is None:
        return info["x"]
    out = callback(info)
    return out if isinstance(out, torch.Tensor) else info["x"]


def _steps(timesteps, progress: bool):
    return tqdm(total=len(timesteps), disable=not progress, desc="sampling", leave=False)


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps,
    *,
    variance: str = "fixed_small",
    generator: Generator = None,
    callback: Callback = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling, Algorithm 2 of Ho et al. (2020), on any timestep subsequence.

    x_prev ~ N(μ̃(x̂0, x_t), σ²) with σ² = β̃ (``fixed_small``, the posterior variance) or
    σ² = β (``fixed_large``); β = 1 - ᾱ_t/ᾱ_prev is the effective β of a skipped step. z = 0 at the
    last step.
    """
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"Unknown DDPM variance {variance!r}; choose fixed_small or fixed_large")
    bar = _steps(timesteps, progress)
    n = len(timesteps)
    for i, t, a_t, a_prev in _schedule(denoiser, timesteps):
        eps = denoiser(x, _t_tensor(t, x))
        x0 = predict_x0_from_eps(x, t, eps, denoiser.alphas_cumprod)
        mean, beta_tilde = q_posterior_mean_variance(x0, x, a_t, a_prev)
        if i < n - 1:
            var = max(beta_tilde, 1e-20) if variance == "fixed_small" else 1.0 - a_t / a_prev
            z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + math.sqrt(var) * z
        else:
            x = mean
        bar.update()
        x = _after_step(callback, {"i": i, "t": t, "x": x, "denoised": x0})
    bar.close()
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps,
    *,
    eta: float = 0.0,
    final_alpha_cumprod: float = 1.0,
    generator: Generator = None,
    callback: Callback = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM, eq. 12 of Song et al. (2021):

    x_prev = √ᾱ_prev x̂0 + √(1 - ᾱ_prev - σ²) ε̂ + σ z,
    σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_prev).

    η = 0 is deterministic (first-order solver of the probability-flow ODE); η = 1 is DDPM-like.
    ``final_alpha_cumprod`` is ᾱ after the last step (1.0; diffusers' ``set_alpha_to_one=False``
    uses ᾱ_0 instead).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    bar = _steps(timesteps, progress)
    for i, t, a_t, a_prev in _schedule(denoiser, timesteps, final_alpha_cumprod):
        eps = denoiser(x, _t_tensor(t, x))
        x0 = predict_x0_from_eps(x, t, eps, denoiser.alphas_cumprod)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if eta > 0:
            x = x + sigma * randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        bar.update()
        x = _after_step(callback, {"i": i, "t": t, "x": x, "denoised": x0})
    bar.close()
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps,
    *,
    order: int = 2,
    lower_order_final: bool = True,
    generator: Generator = None,
    callback: Callback = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++ (Lu et al. 2022, Algorithm 2), data prediction, multistep.

    First order (= DDIM, η = 0):   x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂0_s
    Second order (2M), r = h_prev/h:  D = (1 + 1/(2r)) x̂0_s - (1/(2r)) x̂0_prev,
                                      x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D
    The first step is first order (no history); with ``lower_order_final`` so is the last one
    (the step to σ = 0, where a second-order step is unstable for few steps).
    ``generator`` is unused (the solver is deterministic) and accepted for a uniform signature.
    """
    if order not in (1, 2):
        raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {order}")
    n = len(timesteps)
    bar = _steps(timesteps, progress)
    x0_prev, h_prev = None, None
    for i, t, a_s, a_t in _schedule(denoiser, timesteps):
        eps = denoiser(x, _t_tensor(t, x))
        x0 = predict_x0_from_eps(x, t, eps, denoiser.alphas_cumprod)
        alpha_s, sigma_s = math.sqrt(a_s), math.sqrt(1 - a_s)
        alpha_t, sigma_t = math.sqrt(a_t), math.sqrt(1 - a_t)
        first_order = order == 1 or x0_prev is None or (lower_order_final and i == n - 1)
        if first_order:
            D = x0
        else:
            r = h_prev / h_of(alpha_s, sigma_s, alpha_t, sigma_t)
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        if sigma_t == 0.0:  # final step to the data: h = ∞, e^{-h} = 0
            x_new, h = D, math.inf
        else:
            h = h_of(alpha_s, sigma_s, alpha_t, sigma_t)
            x_new = (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * D
        x0_prev, h_prev = x0, h
        bar.update()
        x = _after_step(callback, {"i": i, "t": t, "x": x_new, "denoised": x0})
    bar.close()
    return x


def h_of(alpha_s: float, sigma_s: float, alpha_t: float, sigma_t: float) -> float:
    """h = λ_t - λ_s with λ = log(α/σ), the half-log-SNR."""
    return (math.log(alpha_t) - math.log(sigma_t)) - (math.log(alpha_s) - math.log(sigma_s))


def sample_dpmpp_1(denoiser: Denoiser, x: torch.Tensor, timesteps, **kwargs) -> torch.Tensor:
    """DPM-Solver++ first order (mathematically DDIM with η = 0)."""
    return sample_dpmpp_2m(denoiser, x, timesteps, order=1, **kwargs)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_1": sample_dpmpp_1,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler registered as ``name``; a ValueError lists the valid names."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None
