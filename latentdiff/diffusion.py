"""The diffusion math of latentdiff: schedules, the forward process, conversions, training targets.

Notation (written once, used everywhere; DDPM / DDIM / diffusers):

    T                   number of training timesteps (1000); integer timestep t in {0, ..., T-1}
    betas[t]      = β_t  variance added at step t
    alphas[t]     = α_t = 1 - β_t
    alphas_cumprod[t] = ᾱ_t = ∏_{s≤t} α_s
    x0                  clean data (for latent diffusion: the scaled VAE latent z)
    x_t                 noisy sample,  x_t = √ᾱ_t x0 + √(1-ᾱ_t) eps          (q_sample)
    eps                 the Gaussian noise, eps ~ N(0, I)
    v                   velocity,       v = √ᾱ_t eps - √(1-ᾱ_t) x0            (Salimans & Ho 2022)
    SNR(t)              ᾱ_t / (1 - ᾱ_t)

Tables are float64 (guided-diffusion's habit) and are cast to the sample's dtype at use.
Every function takes plain tensors and numbers; none takes a config object.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TimestepSpacing = Literal["leading", "trailing", "linspace", "logsnr"]
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "logsnr")
PredictionType = Literal["epsilon", "v_prediction"]
PREDICTION_TYPES = ("epsilon", "v_prediction")


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def make_betas(
    schedule: str = "scaled_linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> torch.Tensor:
    """β_t for t = 0..T-1 in float64.

    - ``linear``: β evenly spaced from beta_start to beta_end (Ho et al. 2020).
    - ``scaled_linear``: √β evenly spaced, squared (Stable Diffusion).
    - ``squaredcos_cap_v2``: cosine schedule (Nichol & Dhariwal 2021, eq. 17),
      ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T)+s)/(1+s)·π/2), s = 0.008, β_t = min(1 - ᾱ_{t+1}/ᾱ_t, 0.999).
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    T = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"Unknown beta schedule {schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 - β_s), float64."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def make_alphas_cumprod(
    schedule: str = "scaled_linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> torch.Tensor:
    """ᾱ_t table (float64) for a named schedule; see :func:`make_betas`."""
    return alphas_cumprod_from_betas(make_betas(schedule, num_train_timesteps, beta_start, beta_end))


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t), float64, shape of t."""
    table = alphas_cumprod.to(torch.float64)
    a = table[t.long().to(table.device)].to(t.device)  # no host sync when the table lives on t's device
    return a / (1.0 - a)


# ----------------------------------------------------------------------------------------------
# Forward process and conversions
# ----------------------------------------------------------------------------------------------


def _extract(table: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
    """table[t] cast to x's dtype/device and shaped (B, 1, 1, ...) to broadcast against x."""
    if not torch.is_tensor(t):
        t = torch.tensor([t])
    table = table.to(torch.float64)
    t = t.reshape(-1).long().to(table.device)  # a table moved to the GPU once avoids a host sync per call
    vals = table[t].to(device=x.device, dtype=x.dtype)
    return vals.reshape(-1, *([1] * (x.ndim - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x0): x_t = √ᾱ_t x0 + √(1-ᾱ_t) eps (Ho et al. 2020, eq. 4)."""
    a = _extract(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def predict_x0_from_eps(x_t: torch.Tensor, t, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x̂0 = (x_t - √(1-ᾱ_t) eps) / √ᾱ_t."""
    a = _extract(alphas_cumprod, t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def predict_eps_from_x0(x_t: torch.Tensor, t, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ε̂ = (x_t - √ᾱ_t x̂0) / √(1-ᾱ_t)."""
    a = _extract(alphas_cumprod, t, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def get_v(x0: torch.Tensor, eps: torch.Tensor, t, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ_t eps - √(1-ᾱ_t) x0 (Salimans & Ho 2022)."""
    a = _extract(alphas_cumprod, t, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def predict_x0_from_v(x_t: torch.Tensor, t, v: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x̂0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
    a = _extract(alphas_cumprod, t, x_t)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


def predict_eps_from_v(x_t: torch.Tensor, t, v: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ε̂ = √(1-ᾱ_t) x_t + √ᾱ_t v."""
    a = _extract(alphas_cumprod, t, x_t)
    return (1 - a).sqrt() * x_t + a.sqrt() * v


def q_posterior_mean_variance(
    x0: torch.Tensor, x_t: torch.Tensor, alpha_prod_t: float, alpha_prod_prev: float
) -> tuple[torch.Tensor, float]:
    """Mean μ̃ and variance β̃ of q(x_prev | x_t, x0) between two timesteps of a (sub)sequence.

    With β = 1 - ᾱ_t/ᾱ_prev (the effective β of the skipped step; equals β_t for consecutive steps):
    μ̃ = √ᾱ_prev β/(1-ᾱ_t) x0 + √(1-β) (1-ᾱ_prev)/(1-ᾱ_t) x_t,   β̃ = (1-ᾱ_prev)/(1-ᾱ_t) β.
    """
    beta = 1.0 - alpha_prod_t / alpha_prod_prev
    coef_x0 = math.sqrt(alpha_prod_prev) * beta / (1.0 - alpha_prod_t)
    coef_xt = math.sqrt(1.0 - beta) * (1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t)
    variance = (1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t) * beta
    return coef_x0 * x0 + coef_xt * x_t, variance


# ----------------------------------------------------------------------------------------------
# Training: targets, weights, noise
# ----------------------------------------------------------------------------------------------


def training_target(
    x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What the network is trained to output: eps (L_simple, Ho et al. 2020) or v."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return get_v(x0, eps, t, alphas_cumprod)
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def min_snr_weights(
    t: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023), float32, shape (B,).

    ε-prediction: min(SNR, γ)/SNR;  v-prediction: min(SNR, γ)/(SNR + 1).
    """
    s = snr(alphas_cumprod, t)
    clipped = torch.clamp(s, max=gamma)
    if prediction_type == "epsilon":
        w = clipped / s
    elif prediction_type == "v_prediction":
        w = clipped / (s + 1)
    else:
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    return w.float()


def sample_noise(
    shape: Sequence[int],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    offset_noise: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """eps ~ N(0, I), plus optional offset noise: eps += offset · N(0, I) per (sample, channel).

    ``generator`` may be a list with one generator per batch element (per-image seeds); each
    element's noise then depends only on its own generator, as in diffusers' ``randn_tensor``.
    """
    eps = randn(shape, generator=generator, device=device, dtype=dtype)
    if offset_noise:
        eps = eps + offset_noise * randn((shape[0], shape[1], *([1] * (len(shape) - 2))), generator=generator,
                                         device=device, dtype=dtype)
    return eps


def randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise; a list of generators draws each batch element from its own generator.

    Noise is drawn on the generator's device and moved, so a CPU generator gives the same numbers
    whatever device the sample lives on (diffusers' convention).
    """
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"Got {len(generator)} generators for a batch of {shape[0]}; pass one per image")
        parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(parts).to(device if device is not None else parts[0].device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device if device is not None
                                                                                       else gen_device)


# ----------------------------------------------------------------------------------------------
# Inference timesteps
# ----------------------------------------------------------------------------------------------


def make_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    spacing: str = "leading",
    steps_offset: int = 0,
    alphas_cumprod: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decreasing integer timesteps for sampling, with the spacings diffusers names
    (Table 2 of Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed").

    - ``leading``: t = i·⌊T/n⌋ + steps_offset, i = n-1..0 (Stable Diffusion's default)
    - ``trailing``: t = round(T - i·T/n) - 1, i = 0..n-1 (always starts at T-1)
    - ``linspace``: t = round(linspace(0, T-1, n)), reversed
    - ``logsnr``: uniform in the half-log-SNR λ = log(α/σ) from t = T-1 to t = 0, each λ mapped to a
      fractional t by linear interpolation of the λ table and rounded (needs ``alphas_cumprod``). The spacing DPM-Solver recommends
      ("logSNR", Lu et al. 2022, §3.3 / appendix) and diffusers' ``use_lu_lambdas``; where rounding
      gives a timestep twice (many steps on a 1000-step table), the lower ones are lifted so the list
      stays strictly decreasing (diffusers keeps the duplicates, i.e. zero-length steps).
    """
    T = num_train_timesteps
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    if num_inference_steps > T:
        raise ValueError(f"num_inference_steps ({num_inference_steps}) cannot exceed the {T} training timesteps")
    n = num_inference_steps
    if spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "logsnr":
        if alphas_cumprod is None or len(alphas_cumprod) != T:
            raise ValueError(f"timestep spacing 'logsnr' needs the {T}-entry alphas_cumprod table")
        ac = alphas_cumprod.detach().double().cpu().numpy()
        lam = 0.5 * (np.log(ac) - np.log1p(-ac))  # increasing as t decreases
        targets = np.linspace(lam[T - 1], lam[0], n)
        t_frac = np.interp(targets, lam[::-1], np.arange(T - 1, -1, -1, dtype=np.float64))  # λ is decreasing in t
        ts = t_frac.round().astype(np.int64)
        for k in range(n - 2, -1, -1):  # strictly decreasing: lift collisions at the low-noise end
            ts[k] = max(ts[k], ts[k + 1] + 1)
    else:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {', '.join(TIMESTEP_SPACINGS)}")
    return torch.from_numpy(ts)
