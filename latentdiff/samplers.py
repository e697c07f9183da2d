"""Samplers: stateless functions of (denoiser, x, noise levels, generator).

A *denoiser* is any callable ``denoiser(x_t, t) -> eps`` (ε-prediction, whatever the network
was trained on; see :mod:`latentdiff.denoisers`) that carries the float64 table
``denoiser.alphas_cumprod``. ``t`` is a (B,) tensor: ``long`` for training timesteps, float64 for
fractional ones (continuous noise levels between two training timesteps).

The noise levels ``steps`` are given in one of two forms, told apart by dtype:

- integer training timesteps (n values, decreasing; :func:`latentdiff.diffusion.make_timesteps`):
  each sampler steps from ``timesteps[i]`` to ``timesteps[i+1]`` and from the last one to the clean
  sample (ᾱ = 1); this is the form the DDPM/DDIM/DPM-Solver++ samplers were first written for;
- floating-point sigmas (n+1 values σ_0 > … > σ_n, σ_n usually 0; :func:`latentdiff.diffusion.make_sigmas`):
  Karras/exponential/AYS/... schedules whose σ fall between training timesteps.

``x`` is always the sample at the first noise level *in the model's own scaling*, x_t = √ᾱ x0 + √(1-ᾱ) eps
(so x_T ~ N(0, I) for every sampler and schedule), and the result is x0. The k-diffusion-style samplers
(Euler, Heun, DPM2, LMS, DPM++ SDE, UniPC) work internally on x̃ = x_t/√ᾱ = x0 + σ eps (Karras et al.
2022, the "variance-exploding" view) with the denoiser D(x̃; σ) = x̃ - σ ε̂(x̃/√(1+σ²), t(σ)), t(σ) the
fractional timestep of :func:`latentdiff.diffusion.sigma_to_t` (ᾱ(t) = 1/(1+σ²), never rounded).

Notation as in :mod:`latentdiff.diffusion`; for DPM-Solver, α_t = √ᾱ_t, σ_t = √(1-ᾱ_t) in the VP view,
λ = log(α/σ) = -log σ̃ (σ̃ the VE sigma), h = λ_next - λ.

``generator`` is a torch.Generator or a list with one generator per batch element; noise for
image i is then drawn from generator i only, so an image does not depend on its batch-mates.
``noise_sampler(sigma, sigma_next) -> N(0, I) tensor``, if given, replaces it for the stochastic
samplers (k-diffusion's hook; :class:`BrownianTreeNoiseSampler` is the built-in alternative).
``callback``, if given, is called after every step with a dict
``{"i": step index, "t": timestep, "sigma": σ of the step, "x": new sample (model scaling), "denoised": x̂0}``;
if it returns a tensor, that tensor (in the model's scaling) replaces the sample (diffusers'
``callback_on_step_end`` contract: this is how inpainting puts the noised known region back after
every step, as diffusers' inpaint pipeline does, without any sampler knowing about masks).
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .diffusion import (
    check_sigmas,
    lcm_boundary_scalings,
    predict_x0_from_eps,
    q_posterior_mean_variance,
    randn,
    sigma_to_t,
)


class Denoiser(Protocol):
    alphas_cumprod: torch.Tensor

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None] | None
NoiseSampler = Callable[[float, float], torch.Tensor] | None


def _is_timesteps(steps) -> bool:
    """Integer dtype (tensor, array or list of ints) = training timesteps; floating = sigmas."""
    if torch.is_tensor(steps):
        return not steps.is_floating_point()
    arr = np.asarray(steps)
    return arr.dtype.kind in "iu"


def _levels(denoiser: Denoiser, steps) -> tuple[list[float], list[int | float]]:
    """(sigmas σ_0..σ_n, timesteps t_0..t_{n-1}) of either form of ``steps``, validated.

    Timesteps come back as ints where they are training timesteps (the table is then used exactly),
    as floats where fractional.
    """
    ac = denoiser.alphas_cumprod.to(torch.float64)
    if _is_timesteps(steps):
        ts = [int(t) for t in steps]
        if len(ts) < 1:
            raise ValueError("timesteps is empty: sampling needs at least one step")
        if any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError(f"timesteps must be strictly decreasing, got {ts}")
        if ts[0] >= len(ac) or ts[-1] < 0:
            raise ValueError(f"timesteps must lie in [0, {len(ac) - 1}], got {ts[0]}..{ts[-1]}")
        a = ac[torch.tensor(ts)]
        return ((1 - a) / a).sqrt().tolist() + [0.0], ts
    sigmas = check_sigmas(steps)
    t = sigma_to_t(sigmas[:-1], ac).tolist()
    ts = [int(v) if v == int(v) else v for v in t]
    return sigmas.tolist(), ts


def _schedule(denoiser: Denoiser, steps, final_alpha_cumprod: float = 1.0):
    """Yield (i, t, ᾱ_t, ᾱ_next) for each step; ᾱ_next of a last step to σ = 0 is ``final_alpha_cumprod``.
    ᾱ is the table entry at a training timestep, 1/(1+σ²) between them."""
    sigmas, ts = _levels(denoiser, steps)
    ac = denoiser.alphas_cumprod.to(torch.float64)

    def abar(k: int) -> float:
        if k == len(ts):
            return final_alpha_cumprod if sigmas[k] == 0.0 else 1.0 / (1.0 + sigmas[k] ** 2)
        return float(ac[ts[k]]) if isinstance(ts[k], int) else 1.0 / (1.0 + sigmas[k] ** 2)

    for i, t in enumerate(ts):
        yield i, t, sigmas[i], abar(i), abar(i + 1)


def _num_steps(steps) -> int:
    return len(steps) if _is_timesteps(steps) else len(steps) - 1


def _t_tensor(t: int | float, x: torch.Tensor) -> torch.Tensor:
    dtype = torch.long if isinstance(t, int) else torch.float64
    return torch.full((x.shape[0],), t, device=x.device, dtype=dtype)


def _after_step(callback: Callback, info: dict) -> torch.Tensor:
    """Report a step; the callback may return a replacement for the sample ``info["x"]``."""
    if callback is None:
        return info["x"]
    out = callback(info)
    return out if isinstance(out, torch.Tensor) else info["x"]


def _steps(timesteps, progress: bool):
    n = len(timesteps) - (0 if _is_timesteps(timesteps) else 1)
    return tqdm(total=n, disable=not progress, desc="sampling", leave=False)


def _noise(noise_sampler: NoiseSampler, generator: Generator, x: torch.Tensor) -> Callable[[float, float], torch.Tensor]:
    """The noise of a stochastic step from σ to σ_next: the hook if given, else N(0, I) drawn from the
    generator(s) (one per image), exactly as the samplers drew it before the hook existed."""
    if noise_sampler is not None:
        return lambda sigma, sigma_next: noise_sampler(sigma, sigma_next).to(device=x.device, dtype=x.dtype)
    return lambda sigma, sigma_next: randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps,
    *,
    variance: str = "fixed_small",
    generator: Generator = None,
    noise_sampler: NoiseSampler = None,
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
    n = _num_steps(timesteps)
    noise = _noise(noise_sampler, generator, x)
    for i, t, sig, a_t, a_prev in _schedule(denoiser, timesteps):
        eps = denoiser(x, _t_tensor(t, x))
        x0 = predict_x0_from_eps(x, t, eps, denoiser.alphas_cumprod)
        mean, beta_tilde = q_posterior_mean_variance(x0, x, a_t, a_prev)
        if i < n - 1:
            var = max(beta_tilde, 1e-20) if variance == "fixed_small" else 1.0 - a_t / a_prev
            z = noise(sig, math.sqrt((1 - a_prev) / a_prev))
            x = mean + math.sqrt(var) * z
        else:
            x = mean
        bar.update()
        x = _after_step(callback, {"i": i, "t": t, "sigma": sig, "x": x, "denoised": x0})
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
    noise_sampler: NoiseSampler = None,
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
    noise = _noise(noise_sampler, generator, x)
    for i, t, sig, a_t, a_prev in _schedule(denoiser, timesteps, final_alpha_cumprod):
        eps = denoiser(x, _t_tensor(t, x))
        x0 = predict_x0_from_eps(x, t, eps, denoiser.alphas_cumprod)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if eta > 0:
            x = x + sigma * noise(sig, math.sqrt((1 - a_prev) / a_prev))
        bar.update()
        x = _after_step(callback, {"i": i, "t": t, "sigma": sig, "x": x, "denoised": x0})
    bar.close()
    return x


@torch.no_grad()
def sample_lcm(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps,
    *,
    timestep_scaling: float = 10.0,
    generator: Generator = None,
    noise_sampler: NoiseSampler = None,
    callback: Callback = None,
    progress: bool = False,
) -> torch.Tensor:
    """Multistep consistency sampling of a latent consistency model (Luo et al. 2023, Algorithm 1;
    diffusers' ``LCMScheduler``): at each t, the consistency function f(x_t, t) = c_skip x_t + c_out x̂0
    jumps to the clean sample; then it is noised again to the next timestep,
    x_next = √ᾱ_next f + √(1-ᾱ_next) z. The last step returns f. Use the ``lcm`` timestep spacing
    (the distillation's DDIM steps) with 2–8 steps and little or no classifier-free guidance.
    """
    bar = _steps(timesteps, progress)
    n = _num_steps(timesteps)
    noise = _noise(noise_sampler, generator, x)
    for i, t, sig, _a_t, a_next in _schedule(denoiser, timesteps):
        eps = denoiser(x, _t_tensor(t, x))
        x0 = predict_x0_from_eps(x, t, eps, denoiser.alphas_cumprod)
        c_skip, c_out = lcm_boundary_scalings(t, timestep_scaling)
        denoised = c_out * x0 + c_skip * x
        if i < n - 1:
            x = math.sqrt(a_next) * denoised + math.sqrt(1 - a_next) * noise(sig, math.sqrt((1 - a_next) / a_next))
        else:
            x = denoised
        bar.update()
        x = _after_step(callback, {"i": i, "t": t, "sigma": sig, "x": x, "denoised": denoised})
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
    noise_sampler: NoiseSampler = None,
    callback: Callback = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++ (Lu et al. 2022, Algorithm 2), data prediction, multistep.

    First order (= DDIM, η = 0):   x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂0_s
    Second order (2M), r = h_prev/h:  D = (1 + 1/(2r)) x̂0_s - (1/(2r)) x̂0_prev,
                                      x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D
    The first step is first order (no history); with ``lower_order_final`` so is the last one
    (the step to σ = 0, where a second-order step is unstable for few steps).
    ``generator`` and ``noise_sampler`` are unused (the solver is deterministic) and accepted for a
    uniform signature.
    """
    if order not in (1, 2):
        raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {order}")
    n = _num_steps(timesteps)
    bar = _steps(timesteps, progress)
    x0_prev, h_prev = None, None
    for i, t, sig, a_s, a_t in _schedule(denoiser, timesteps):
        eps = denoiser(x, _t_tensor(t, x))
        x0 = predict_x0_from_eps(x, t, eps, denoiser.alphas_cumprod)
        alpha_s, sigma_s = math.sqrt(a_s), math.sqrt(1 - a_s)
        alpha_t, sigma_t = math.sqrt(a_t), math.sqrt(1 - a_t)
        h = math.inf if sigma_t == 0.0 else h_of(alpha_s, sigma_s, alpha_t, sigma_t)  # to the data: h = ∞
        # (the step to σ = 0 is first order whatever lower_order_final says: at h = ∞ there is no r)
        first_order = order == 1 or x0_prev is None or (lower_order_final and i == n - 1) or sigma_t == 0.0
        if first_order:
            D = x0
        else:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x_new = D if sigma_t == 0.0 else (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * D  # e^{-∞} = 0
        x0_prev, h_prev = x0, h
        bar.update()
        x = _after_step(callback, {"i": i, "t": t, "sigma": sig, "x": x_new, "denoised": x0})
    bar.close()
    return x


def h_of(alpha_s: float, sigma_s: float, alpha_t: float, sigma_t: float) -> float:
    """h = λ_t - λ_s with λ = log(α/σ), the half-log-SNR."""
    return (math.log(alpha_t) - math.log(sigma_t)) - (math.log(alpha_s) - math.log(sigma_s))


def sample_dpmpp_1(denoiser: Denoiser, x: torch.Tensor, timesteps, **kwargs) -> torch.Tensor:
    """DPM-Solver++ first order (mathematically DDIM with η = 0)."""
    return sample_dpmpp_2m(denoiser, x, timesteps, order=1, **kwargs)


# ----------------------------------------------------------------------------------------------
# Noise for stochastic samplers
# ----------------------------------------------------------------------------------------------

NOISE_SAMPLERS = ("generator", "brownian")
ETA_SAMPLERS = ("ddim", "euler_a", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")


class _Table:
    """Just the ᾱ table, where a function needs a denoiser's schedule but no network."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = alphas_cumprod


class BrownianTreeNoiseSampler:
    """Noise from one fixed Brownian path W(σ) per image (torchsde's ``BrownianTree``, an optional
    dependency: ``pip install 'latentdiff[samplers]'``), as k-diffusion's sampler of the same name:

        noise(σ, σ_next) = (W(σ_next) - W(σ)) / √|σ_next - σ|  ~ N(0, I)

    Increments over disjoint intervals are independent, and a step σ → σ_next sees the same piece of the
    path whatever the step count: an SDE sampler at 20 and 40 steps then solves the same SDE path and gives
    nearly the same image (Karras et al. 2022 §4; Lu et al. 2022). ``seed`` is one int per image (each
    image's path depends only on its own seed) or one int for the whole batch (one tree of batch shape).
    Requests outside [σ_min, σ_max] are clamped into it.
    """

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed: int | Sequence[int] | None = None):
        try:
            import torchsde
        except ImportError as e:
            raise ImportError("the Brownian-tree noise sampler needs torchsde: pip install 'latentdiff[samplers]'") from e
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        self.batched = isinstance(seed, (list, tuple))
        if self.batched and len(seed) != x.shape[0]:
            raise ValueError(f"Got {len(seed)} Brownian-tree seeds for a batch of {x.shape[0]}; pass one per image")
        w0 = torch.zeros_like(x[0] if self.batched else x)
        # the tree spans a hair more than [σ_min, σ_max], so clamped requests never touch its ends
        # (torchsde warns about, and mishandles, queries a rounding error outside them)
        lo, hi = self.sigma_min * (1 - 1e-6), self.sigma_max * (1 + 1e-6)
        self.trees = [torchsde.BrownianTree(lo, w0, hi, entropy=int(s)) for s in (seed if self.batched else [seed])]

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        a = min(max(float(sigma), self.sigma_min), self.sigma_max)
        b = min(max(float(sigma_next), self.sigma_min), self.sigma_max)
        lo, hi = min(a, b), max(a, b)
        sign = 1.0 if b >= a else -1.0  # W(σ_next) - W(σ) for decreasing σ
        w = [tree(lo, hi) for tree in self.trees] if hi > lo else [torch.zeros_like(t._w0) for t in self.trees]
        w = torch.stack(w) if self.batched else w[0]
        return w * (sign / math.sqrt(hi - lo)) if hi > lo else w


def seeds_from_generators(generator: Generator, batch: int) -> list[int]:
    """One Brownian-tree seed per image, drawn from that image's generator (or from one shared generator)."""
    gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * batch
    return [int(torch.randint(0, 2**63 - 1, (), generator=g).item()) for g in gens]


def make_noise_sampler(kind: str | NoiseSampler, x: torch.Tensor, steps, alphas_cumprod: torch.Tensor, *,
                       seeds: Sequence[int] | None = None, generator: Generator = None) -> NoiseSampler:
    """The ``noise_sampler`` for a run over ``steps`` (timesteps or sigmas, as the samplers take them):
    ``"generator"`` (None: per-image generator noise, the default), ``"brownian"``
    (:class:`BrownianTreeNoiseSampler` over the schedule's σ range, one tree per image from ``seeds`` or
    from the generators), or a callable, returned as is."""
    if kind is None or kind == "generator":
        return None
    if callable(kind):
        return kind
    if kind != "brownian":
        raise ValueError(f"Unknown noise sampler {kind!r}; choose one of {', '.join(NOISE_SAMPLERS)} or pass a callable")
    s = torch.as_tensor(_levels(_Table(alphas_cumprod), steps)[0], dtype=torch.float64)
    positive = s[(s > 0) & torch.isfinite(s)]
    seeds = list(seeds) if seeds is not None else seeds_from_generators(generator, x.shape[0])
    return BrownianTreeNoiseSampler(x, float(positive.min()), float(positive.max()), seed=seeds)


# ----------------------------------------------------------------------------------------------
# k-diffusion-style samplers on σ (Karras et al. 2022): state x̃ = x_t/√ᾱ = x0 + σ eps
# ----------------------------------------------------------------------------------------------


class _SigmaWalk:
    """The σ-space view of one denoiser for one sampling run (shared by every k-diffusion-style sampler).

    ``denoised(x̃, σ)`` is D(x̃; σ) = x̃ - σ ε̂(x̃/√(1+σ²), t(σ)) with t(σ) fractional
    (:func:`latentdiff.diffusion.sigma_to_t`, the interpolation diffusers and k-diffusion use) and
    counts network evaluations; ``steps()`` yields (i, σ_i, σ_{i+1}); ``report`` does the callback and
    progress bar; ``start``/``finish`` convert between the model's scaling x_t and x̃.
    """

    def __init__(self, denoiser: Denoiser, steps, callback: Callback, progress: bool):
        self.denoiser = denoiser
        self.sigmas, self.ts = _levels(denoiser, steps)
        self.callback, self.nfe = callback, 0
        self.bar = tqdm(total=len(self.ts), disable=not progress, desc="sampling", leave=False)

    def t_of(self, sigma: float, i: int | None = None) -> int | float:
        if i is not None and sigma == self.sigmas[i]:
            return self.ts[i]
        t = float(sigma_to_t(sigma, self.denoiser.alphas_cumprod))
        return int(t) if t == int(t) else t

    def denoised(self, x: torch.Tensor, sigma: float, i: int | None = None) -> torch.Tensor:
        t = self.t_of(sigma, i)
        self.nfe += 1
        eps = self.denoiser(x / math.sqrt(1.0 + sigma**2), _t_tensor(t, x))
        return x - sigma * eps

    def steps(self):
        for i in range(len(self.ts)):
            yield i, self.sigmas[i], self.sigmas[i + 1]

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return x * math.sqrt(1.0 + self.sigmas[0] ** 2)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        self.bar.close()
        return x / math.sqrt(1.0 + self.sigmas[-1] ** 2)

    def report(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """Progress and callback after step i; returns x̃, replaced if the callback returned a sample."""
        self.bar.update()
        if self.callback is None:
            return x
        scale = math.sqrt(1.0 + self.sigmas[i + 1] ** 2)
        out = self.callback({"i": i, "t": self.ts[i], "sigma": self.sigmas[i], "x": x / scale, "denoised": denoised})
        return out * scale if isinstance(out, torch.Tensor) else x


def _to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """dx̃/dσ of the probability-flow ODE, (x̃ - D)/σ (Karras et al. 2022, eq. 3 with σ(t) = t)."""
    return (x - denoised) / sigma


def _ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step σ → σ_next: step deterministically to σ_down, then add σ_up
    of fresh noise, σ_down² + σ_up² = σ_next². η = 1 matches the DDPM posterior variance; η = 0 is the ODE."""
    if not eta or sigma_next == 0.0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def _exp_step(x: torch.Tensor, sigma: float, sigma_to: float, denoised: torch.Tensor) -> torch.Tensor:
    """First-order exponential-integrator step of the data-prediction ODE (DPM-Solver++ 1 = DDIM):
    x̃_to = (σ_to/σ) x̃ - (e^{-h} - 1) D, h = log σ - log σ_to."""
    if sigma_to == 0.0:
        return denoised
    return (sigma_to / sigma) * x - math.expm1(math.log(sigma_to) - math.log(sigma)) * denoised


def _add_noise(x: torch.Tensor, noise: Callable, sigma: float, sigma_next: float, amount: float) -> torch.Tensor:
    return x + noise(sigma, sigma_next) * amount if amount > 0 else x


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas, *, generator: Generator = None,
                 noise_sampler: NoiseSampler = None, callback: Callback = None, progress: bool = False) -> torch.Tensor:
    """Euler steps of the probability-flow ODE, Karras et al. (2022) Algorithm 2 without churn
    (A1111's "Euler"): x̃_{i+1} = x̃_i + (σ_{i+1} - σ_i) (x̃_i - D(x̃_i; σ_i))/σ_i. Deterministic."""
    walk = _SigmaWalk(denoiser, sigmas, callback, progress)
    x = walk.start(x)
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        x = x + _to_d(x, sigma, denoised) * (sigma_next - sigma)
        x = walk.report(i, x, denoised)
    return walk.finish(x)


@torch.no_grad()
def sample_euler_a(denoiser: Denoiser, x: torch.Tensor, sigmas, *, eta: float = 1.0, s_noise: float = 1.0,
                   generator: Generator = None, noise_sampler: NoiseSampler = None, callback: Callback = None,
                   progress: bool = False) -> torch.Tensor:
    """Euler ancestral (k-diffusion ``sample_euler_ancestral``, A1111's "Euler a"): an Euler step to
    σ_down, then σ_up of fresh noise (:func:`_ancestral_step`; η = 1 is DDPM's posterior variance)."""
    walk, noise = _SigmaWalk(denoiser, sigmas, callback, progress), _noise(noise_sampler, generator, x)
    x = walk.start(x)
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        x = x + _to_d(x, sigma, denoised) * (sigma_down - sigma)
        x = _add_noise(x, noise, sigma, sigma_next, sigma_up * s_noise)
        x = walk.report(i, x, denoised)
    return walk.finish(x)


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas, *, generator: Generator = None,
                noise_sampler: NoiseSampler = None, callback: Callback = None, progress: bool = False) -> torch.Tensor:
    """Heun's second-order method, Karras et al. (2022) Algorithm 1 (deterministic, no churn): an Euler
    step, then the trapezoidal correction with the slope at σ_{i+1}; the last step (σ = 0) is Euler.
    Two network evaluations per step."""
    walk = _SigmaWalk(denoiser, sigmas, callback, progress)
    x = walk.start(x)
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        d = _to_d(x, sigma, denoised)
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0.0:
            x = x_euler
        else:
            d_next = _to_d(x_euler, sigma_next, walk.denoised(x_euler, sigma_next, i + 1))
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
        x = walk.report(i, x, denoised)
    return walk.finish(x)


def _dpm2_step(walk: _SigmaWalk, x: torch.Tensor, sigma: float, sigma_to: float, denoised: torch.Tensor):
    """DPM-Solver-2 in σ (Lu et al. 2022, Algorithm 1 with r = 1/2, as k-diffusion's ``sample_dpm_2``):
    an Euler half-step to the log-midpoint σ_mid = √(σ σ_to), and the full step with the slope there.
    A step to σ_to = 0 is Euler."""
    d = _to_d(x, sigma, denoised)
    if sigma_to == 0.0:
        return x + d * (sigma_to - sigma)
    sigma_mid = math.exp((math.log(sigma) + math.log(sigma_to)) / 2)
    x_mid = x + d * (sigma_mid - sigma)
    return x + _to_d(x_mid, sigma_mid, walk.denoised(x_mid, sigma_mid)) * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm2(denoiser: Denoiser, x: torch.Tensor, sigmas, *, generator: Generator = None,
                noise_sampler: NoiseSampler = None, callback: Callback = None, progress: bool = False) -> torch.Tensor:
    """DPM2 (k-diffusion ``sample_dpm_2``, A1111's "DPM2"): :func:`_dpm2_step` σ_i → σ_{i+1}.
    Two network evaluations per step (one on the last)."""
    walk = _SigmaWalk(denoiser, sigmas, callback, progress)
    x = walk.start(x)
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        x = _dpm2_step(walk, x, sigma, sigma_next, denoised)
        x = walk.report(i, x, denoised)
    return walk.finish(x)


@torch.no_grad()
def sample_dpm2_a(denoiser: Denoiser, x: torch.Tensor, sigmas, *, eta: float = 1.0, s_noise: float = 1.0,
                  generator: Generator = None, noise_sampler: NoiseSampler = None, callback: Callback = None,
                  progress: bool = False) -> torch.Tensor:
    """DPM2 ancestral (k-diffusion ``sample_dpm_2_ancestral``, A1111's "DPM2 a"): :func:`_dpm2_step` to
    σ_down, then σ_up of fresh noise (:func:`_ancestral_step`)."""
    walk, noise = _SigmaWalk(denoiser, sigmas, callback, progress), _noise(noise_sampler, generator, x)
    x = walk.start(x)
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        x = _dpm2_step(walk, x, sigma, sigma_down, denoised)
        x = _add_noise(x, noise, sigma, sigma_next, sigma_up * s_noise)
        x = walk.report(i, x, denoised)
    return walk.finish(x)


def lms_coefficients(sigmas: Sequence[float], i: int, order: int) -> list[float]:
    """∫_{σ_i}^{σ_{i+1}} ℓ_j(σ) dσ for the Lagrange basis ℓ_j through σ_i, σ_{i-1}, …, σ_{i-order+1},
    j = 0..order-1 (linear multistep, Adams–Bashforth with variable steps). Integrated exactly as a
    polynomial (k-diffusion and diffusers use adaptive quadrature, scipy's ``quad``, epsrel 1e-4)."""
    nodes = [sigmas[i - k] for k in range(order)]
    coeffs = []
    for j in range(order):
        others = [nodes[k] for k in range(order) if k != j]
        basis = np.polynomial.Polynomial.fromroots(others) / np.prod([nodes[j] - o for o in others]) \
            if others else np.polynomial.Polynomial([1.0])
        antider = basis.integ()
        coeffs.append(float(antider(sigmas[i + 1]) - antider(sigmas[i])))
    return coeffs


@torch.no_grad()
def sample_lms(denoiser: Denoiser, x: torch.Tensor, sigmas, *, order: int = 4, generator: Generator = None,
               noise_sampler: NoiseSampler = None, callback: Callback = None, progress: bool = False) -> torch.Tensor:
    """Linear multistep (k-diffusion ``sample_lms``, diffusers' LMSDiscreteScheduler; A1111's "LMS"):
    x̃_{i+1} = x̃_i + Σ_j c_j d_{i-j} with the last ``order`` ODE slopes and :func:`lms_coefficients`;
    the order grows from 1 as history accumulates. Deterministic, one evaluation per step."""
    if order < 1:
        raise ValueError(f"LMS order must be >= 1, got {order}")
    walk = _SigmaWalk(denoiser, sigmas, callback, progress)
    x, ds = walk.start(x), []
    for i, sigma, _ in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        ds = [_to_d(x, sigma, denoised)] + ds[: order - 1]  # newest first
        coeffs = lms_coefficients(walk.sigmas, i, min(i + 1, order))
        x = x + sum(c * d for c, d in zip(coeffs, ds))
        x = walk.report(i, x, denoised)
    return walk.finish(x)


@torch.no_grad()
def sample_dpmpp_2s_a(denoiser: Denoiser, x: torch.Tensor, sigmas, *, eta: float = 1.0, s_noise: float = 1.0,
                      generator: Generator = None, noise_sampler: NoiseSampler = None, callback: Callback = None,
                      progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2S) ancestral (Lu et al. 2022, Algorithm 1 with data prediction, single-step, r = 1/2;
    k-diffusion ``sample_dpmpp_2s_ancestral``, A1111's "DPM++ 2S a"): toward σ_down, an exponential
    half-step to the λ-midpoint s, x̂0 there, the full step with it; then σ_up of fresh noise.
    η = 0 is the deterministic DPM-Solver++(2S). Two evaluations per step (one on the last)."""
    walk, noise = _SigmaWalk(denoiser, sigmas, callback, progress), _noise(noise_sampler, generator, x)
    x = walk.start(x)
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0.0:
            x = x + _to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            sigma_s = math.sqrt(sigma * sigma_down)  # λ_s = (λ + λ_down)/2
            x_s = _exp_step(x, sigma, sigma_s, denoised)
            x = _exp_step(x, sigma, sigma_down, walk.denoised(x_s, sigma_s))
        x = _add_noise(x, noise, sigma, sigma_next, sigma_up * s_noise)
        x = walk.report(i, x, denoised)
    return walk.finish(x)


def _nested_noise(noise: Callable, from_generator: bool, sigma: float, sigma_s: float, sigma_next: float):
    """Normalised Brownian increments over [σ_s, σ] and [σ_next, σ] (σ > σ_s > σ_next), drawn lazily.

    A noise hook (a Brownian tree) answers both requests from one path. Independent generator draws
    would not (the intervals overlap; k-diffusion's ``sample_dpmpp_sde`` with its default tree is right,
    with plain ``randn`` it is not: on the Gaussian mixture it misses a component weight by 0.03). So
    generator noise is W(σ_s) - W(σ) = √(σ-σ_s) z1 and W(σ_next) - W(σ) = that + √(σ_s-σ_next) z2."""
    if not from_generator:
        return (lambda: noise(sigma, sigma_s)), (lambda: noise(sigma, sigma_next))
    drawn = {}

    def first():
        if "z1" not in drawn:
            drawn["z1"] = noise(sigma, sigma_s)
        return drawn["z1"]

    def full():
        z2 = noise(sigma_s, sigma_next)
        return (math.sqrt(sigma - sigma_s) * first() + math.sqrt(sigma_s - sigma_next) * z2) / math.sqrt(sigma - sigma_next)

    return first, full


@torch.no_grad()
def sample_dpmpp_sde(denoiser: Denoiser, x: torch.Tensor, sigmas, *, eta: float = 1.0, s_noise: float = 1.0,
                     r: float = 0.5, generator: Generator = None, noise_sampler: NoiseSampler = None,
                     callback: Callback = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++ SDE (k-diffusion ``sample_dpmpp_sde``, diffusers' DPMSolverSDEScheduler; A1111's
    "DPM++ SDE"): a stochastic single-step second-order solver — an ancestral exponential step to the
    intermediate λ_s = λ + r h, x̂0 there, then the ancestral step over the whole interval with
    D = (1 - 1/(2r)) x̂0 + 1/(2r) x̂0_s (Lu et al. 2022, §4 / Algorithm 1 with the SDE's noise).
    The two noises of a step are increments of one Brownian path (:func:`_nested_noise`): from
    ``noise_sampler`` if given (k-diffusion's default is a Brownian tree; :class:`BrownianTreeNoiseSampler`),
    else built from per-image generator noise.
    Two evaluations per step (one on the last)."""
    walk, noise = _SigmaWalk(denoiser, sigmas, callback, progress), _noise(noise_sampler, generator, x)
    x = walk.start(x)
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        if sigma_next == 0.0:
            x = x + _to_d(x, sigma, denoised) * (sigma_next - sigma)
        else:
            lam, lam_next = -math.log(sigma), -math.log(sigma_next)
            sigma_s = math.exp(-(lam + r * (lam_next - lam)))
            # the two noises are increments of one Brownian path over [σ_s, σ] ⊂ [σ_next, σ]: from a
            # generator, build the second from the first plus an independent piece (a Brownian tree does it itself)
            z_s, z = _nested_noise(noise, noise_sampler is None, sigma, sigma_s, sigma_next)
            sd, su = _ancestral_step(sigma, sigma_s, eta)
            x_s = _exp_step(x, sigma, sd, denoised) + (z_s() * (su * s_noise) if su > 0 else 0)
            denoised_s = walk.denoised(x_s, sigma_s)
            fac = 1 / (2 * r)
            sd, su = _ancestral_step(sigma, sigma_next, eta)
            x = _exp_step(x, sigma, sd, (1 - fac) * denoised + fac * denoised_s) + (z() * (su * s_noise) if su > 0 else 0)
        x = walk.report(i, x, denoised)
    return walk.finish(x)


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas, *, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint", generator: Generator = None, noise_sampler: NoiseSampler = None,
                        callback: Callback = None, progress: bool = False) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", §5 / appendix; diffusers'
    DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), k-diffusion ``sample_dpmpp_2m_sde``;
    A1111's "DPM++ 2M SDE"). With η h:

        x̃' = (σ_next/σ) e^{-ηh} x̃ + (1 - e^{-(1+η)h}) D0 + c (1/r)(D0 - D_prev) + σ_next √(1 - e^{-2ηh}) z

    c = (1 - e^{-(1+η)h})/2 (``midpoint``, the default of diffusers, k-diffusion and A1111) or
    1 - (1 - e^{-(1+η)h})/((1+η)h) (``heun``); r = h_prev/h. The first step is first order, the step to
    σ = 0 gives D0. η = 0 is the deterministic DPM-Solver++(2M)."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"Unknown solver_type {solver_type!r}; choose midpoint or heun")
    walk, noise = _SigmaWalk(denoiser, sigmas, callback, progress), _noise(noise_sampler, generator, x)
    x, old_denoised, h_last = walk.start(x), None, None
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        if sigma_next == 0.0:
            x, h = denoised, None
        else:
            h = math.log(sigma) - math.log(sigma_next)
            eta_h = eta * h
            phi = -math.expm1(-h - eta_h)  # 1 - e^{-(1+η)h}
            x = (sigma_next / sigma) * math.exp(-eta_h) * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                c = phi / 2 if solver_type == "midpoint" else phi / (-h - eta_h) + 1
                x = x + c * (1 / r) * (denoised - old_denoised)
            if eta:
                x = _add_noise(x, noise, sigma, sigma_next, sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        old_denoised, h_last = denoised, h
        x = walk.report(i, x, denoised)
    return walk.finish(x)


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas, *, eta: float = 1.0, s_noise: float = 1.0,
                        generator: Generator = None, noise_sampler: NoiseSampler = None, callback: Callback = None,
                        progress: bool = False) -> torch.Tensor:
    """SDE-DPM-Solver++(3M) (Lu et al. 2022, third-order multistep with the SDE's noise; k-diffusion
    ``sample_dpmpp_3m_sde``, A1111's "DPM++ 3M SDE"). With h_η = (1+η) h,
    φ₂ = (e^{-h_η} - 1)/h_η + 1, φ₃ = φ₂/h_η - 1/2 and divided differences D1, D2 of the last three x̂0:

        x̃' = e^{-h_η} x̃ + (1 - e^{-h_η}) D0 + φ₂ D1 - φ₃ D2 + σ_next √(1 - e^{-2ηh}) z

    (e^{-h_η} = (σ_next/σ) e^{-ηh}). The order grows 1, 2, 3 with the history; the step to σ = 0 gives D0.
    We follow k-diffusion, whose φ₃ term is the exact integral (checked in tests/test_k_samplers.py);
    diffusers' ``sde-dpmsolver++`` third-order update has the sign of its 1/2 flipped."""
    walk, noise = _SigmaWalk(denoiser, sigmas, callback, progress), _noise(noise_sampler, generator, x)
    x = walk.start(x)
    d_1 = d_2 = None  # the previous two x̂0
    h_1 = h_2 = None
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        if sigma_next == 0.0:
            x, h = denoised, None
        else:
            h = math.log(sigma) - math.log(sigma_next)
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            if eta:
                x = _add_noise(x, noise, sigma, sigma_next, sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise)
        d_1, d_2, h_1, h_2 = denoised, d_1, h, h_1
        x = walk.report(i, x, denoised)
    return walk.finish(x)


def _unipc_coefficients(rks: list[float], hh: float, B_h: float, order: int, corrector: bool) -> list[float]:
    """ρ of UniP (``corrector=False``: order-1 values for the history) or UniC (order values, the last for
    the new evaluation): solve R ρ = b with R_{k,j} = r_j^k and b_k = k! φ_{k+1}(hh)/B(h)
    (Zhao et al. 2023, Algorithm / eq. for B(h); φ_k the exponential-integrator φ functions)."""
    h_phi_k = math.expm1(hh) / hh - 1
    factorial, b = 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / B_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = np.array([[r ** (k - 1) for r in rks] for k in range(1, order + 1)])
    if corrector:
        return [0.5] if order == 1 else np.linalg.solve(R, np.array(b)).tolist()
    if order == 2:
        return [0.5]
    return np.linalg.solve(R[:-1, :-1], np.array(b[:-1])).tolist()


def _unipc_update(x: torch.Tensor, sigma_s: float, sigma_t: float, m0: torch.Tensor, history: list, order: int,
                  m_t: torch.Tensor | None = None) -> torch.Tensor:
    """One UniPC update of x̃ from σ_s to σ_t (data prediction, B(h) = e^{h} - 1 in the VP form's -h: "bh2").

    ``history`` holds (σ, x̂0) of earlier points, newest first; ``m_t`` (x̂0 at σ_t, from the predicted
    sample) turns the predictor UniP into the corrector UniC of the same order."""
    if sigma_t == 0.0:  # h = ∞: the step to the data is first order and gives x̂0 (as diffusers' final step)
        return m0
    lam_s, lam_t = -math.log(sigma_s), -math.log(sigma_t)
    h = lam_t - lam_s
    hh = -h
    B_h = math.expm1(hh)
    rks, D1s = [], []
    for sigma_k, m_k in history[: order - 1]:
        rk = (-math.log(sigma_k) - lam_s) / h
        rks.append(rk)
        D1s.append((m_k - m0) / rk)
    rks.append(1.0)
    x_t = (sigma_t / sigma_s) * x - math.expm1(hh) * m0
    if m_t is None and not D1s:
        return x_t
    rhos = _unipc_coefficients(rks, hh, B_h, order, corrector=m_t is not None)
    res = sum(rho * d for rho, d in zip(rhos, D1s))
    if m_t is not None:
        res = res + rhos[-1] * (m_t - m0)
    return x_t - B_h * res


@torch.no_grad()
def sample_unipc(denoiser: Denoiser, x: torch.Tensor, sigmas, *, order: int = 2, lower_order_final: bool = True,
                 generator: Generator = None, noise_sampler: NoiseSampler = None, callback: Callback = None,
                 progress: bool = False) -> torch.Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), data prediction,
    B(h) = e^{h} - 1 ("bh2"), multistep: as diffusers' UniPCMultistepScheduler defaults (order 2,
    corrector on every step but the first, ``lower_order_final``). Each step evaluates x̂0 once at the
    predicted sample; that evaluation both corrects the sample it was made at (UniC) and drives the next
    prediction (UniP) — so the corrector costs no extra evaluation. Deterministic."""
    if order < 1:
        raise ValueError(f"UniPC order must be >= 1, got {order}")
    walk = _SigmaWalk(denoiser, sigmas, callback, progress)
    n = len(walk.ts)
    x = walk.start(x)
    history: list[tuple[float, torch.Tensor]] = []  # (σ, x̂0), newest first
    last_x, last_order = None, None
    for i, sigma, sigma_next in walk.steps():
        denoised = walk.denoised(x, sigma, i)
        if last_x is not None:  # UniC: correct the sample just predicted with its own evaluation
            (sigma_prev, m_prev), older = history[0], history[1:]
            x = _unipc_update(last_x, sigma_prev, sigma, m_prev, older, last_order, m_t=denoised)
        history = [(sigma, denoised)] + history[: order - 1]
        this_order = min(order, n - i) if lower_order_final else order
        this_order = min(this_order, len(history))
        last_x, last_order = x, this_order
        x = _unipc_update(x, sigma, sigma_next, denoised, history[1:], this_order)
        x = walk.report(i, x, denoised)
    return walk.finish(x)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_1": sample_dpmpp_1,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "euler_a": sample_euler_a,
    "heun": sample_heun,
    "dpm2": sample_dpm2,
    "dpm2_a": sample_dpm2_a,
    "lms": sample_lms,
    "dpmpp_2s_a": sample_dpmpp_2s_a,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "lcm": sample_lcm,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler registered as ``name``; a ValueError lists the valid names."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def count_evaluations(name: str, steps, alphas_cumprod: torch.Tensor) -> int:
    """Network evaluations per image of sampler ``name`` on ``steps`` (timesteps or sigmas), counted by
    running it on a free stand-in denoiser (Heun, DPM2, DPM++ 2S/SDE evaluate twice per step but once
    on the step to σ = 0)."""
    calls = []

    class _Count(_Table):
        def __call__(self, x, t, **_):
            calls.append(1)
            return torch.zeros_like(x)

    get_sampler(name)(_Count(alphas_cumprod), torch.zeros(1, 1, dtype=torch.float64), steps,
                      generator=torch.Generator().manual_seed(0))
    return len(calls)


# ----------------------------------------------------------------------------------------------
# A1111 / Forge names: "DPM++ 2M Karras" = sampler dpmpp_2m + sigma schedule karras
# ----------------------------------------------------------------------------------------------

A1111_SAMPLERS = {  # A1111's sampler label -> ours (k-diffusion's functions behind A1111's labels)
    "Euler": "euler", "Euler a": "euler_a", "Heun": "heun", "DPM2": "dpm2", "DPM2 a": "dpm2_a", "LMS": "lms",
    "DPM++ 2S a": "dpmpp_2s_a", "DPM++ SDE": "dpmpp_sde", "DPM++ 2M": "dpmpp_2m", "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 3M SDE": "dpmpp_3m_sde", "UniPC": "unipc", "DDIM": "ddim", "DDPM": "ddpm", "LCM": "lcm",
}
A1111_SCHEDULES = {  # A1111's "Schedule type" (and the suffix of its older combined names) -> ours
    "Automatic": "default", "Karras": "karras", "Exponential": "exponential", "Polyexponential": "polyexponential",
    "SGM Uniform": "sgm_uniform", "Simple": "simple", "Beta": "beta", "Align Your Steps": "ays",
}


def resolve_sampler(name: str, sigma_schedule=None) -> tuple[str, object]:
    """(registry sampler, sigma schedule) for a registry name or an A1111 name such as "DPM++ 2M Karras",
    "Euler a", "DPM++ 2M SDE Exponential" (case-insensitive). A schedule in the name must agree with an
    explicit ``sigma_schedule``; an unknown name is a ValueError listing the valid ones."""
    if name in SAMPLERS:
        return name, sigma_schedule
    low = name.strip().lower()
    for label in sorted(A1111_SAMPLERS, key=len, reverse=True):
        if low == label.lower() or low.startswith(label.lower() + " "):
            rest = name.strip()[len(label):].strip()
            if not rest:
                return A1111_SAMPLERS[label], sigma_schedule
            schedule = {k.lower(): v for k, v in A1111_SCHEDULES.items()}.get(rest.lower())
            if schedule is None:
                break
            if sigma_schedule not in (None, "default", schedule):
                raise ValueError(f"sampler {name!r} names the {schedule!r} schedule but sigma_schedule={sigma_schedule!r}")
            return A1111_SAMPLERS[label], schedule
    raise ValueError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}, or an A1111 name: "
                     f"one of {', '.join(repr(k) for k in A1111_SAMPLERS)} optionally followed by one of "
                     f"{', '.join(A1111_SCHEDULES)} (e.g. 'DPM++ 2M Karras')")


def a1111_name(sampler: str, sigma_schedule="default") -> str:
    """The A1111 label of a sampler + schedule ("DPM++ 2M Karras"); user lists are not named there."""
    label = {v: k for k, v in A1111_SAMPLERS.items()}.get(sampler, sampler)
    if not isinstance(sigma_schedule, str) or sigma_schedule in ("default", "") or ":" in sigma_schedule:
        return label
    return f"{label} {({v: k for k, v in A1111_SCHEDULES.items()}[sigma_schedule])}"
