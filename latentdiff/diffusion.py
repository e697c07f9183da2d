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
    sigma               σ = √((1-ᾱ)/ᾱ) = 1/√SNR, the noise level of the "variance-exploding" view
                        x̃ = x_t/√ᾱ = x0 + σ eps used by k-diffusion and Karras et al. (2022); ᾱ = 1/(1+σ²)
    fractional t        a timestep between two training timesteps; σ(t) interpolates log σ linearly
                        between its neighbours (k-diffusion's ``t_to_sigma``) and ᾱ(t) = 1/(1+σ(t)²),
                        so t ↔ σ are exact inverses (``sigma_to_t``) and integer t give the table entries

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
TimestepSpacing = Literal["leading", "trailing", "linspace", "logsnr", "lcm"]
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "logsnr", "lcm")
LCM_ORIGINAL_STEPS = 50  # the DDIM skipping-step schedule a latent consistency model is distilled on
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


ZERO_SNR_ALPHA_CUMPROD = 2.0**-24  # ᾱ_{T-1} used for sampling when the table has ᾱ_{T-1} = 0 (diffusers' value)


def alphas_cumprod_for_sampling(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The ᾱ table samplers use: a zero-terminal-SNR table (ᾱ_{T-1} = 0, σ_{T-1} = ∞) gets
    ᾱ_{T-1} = 2⁻²⁴ (σ ≈ 4096), as diffusers' Euler/DPM-Solver schedulers do. Our denoisers return ε̂,
    and x̂0 = (x_t - √(1-ᾱ)ε̂)/√ᾱ has no value at ᾱ = 0 even for a v-prediction network; at 2⁻²⁴
    the first step is the pure-noise step up to a relative 2⁻¹² (√ᾱ). Other tables are returned as they are."""
    table = alphas_cumprod.to(torch.float64)
    if float(table[-1]) > 0.0:
        return table
    table = table.clone()
    table[-1] = ZERO_SNR_ALPHA_CUMPROD
    return table


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """β with zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Algorithm 1): √ᾱ is shifted so √ᾱ_{T-1} = 0 and rescaled so √ᾱ_0 is unchanged; float64."""
    sqrt_ab = alphas_cumprod_from_betas(betas).sqrt()
    s0, sT = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - sT) * (s0 / (s0 - sT))
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t), float64, shape of t."""
    table = alphas_cumprod.to(torch.float64)
    a = table[t.long().to(table.device)].to(t.device)  # no host sync when the table lives on t's device
    return a / (1.0 - a)


# ----------------------------------------------------------------------------------------------
# Forward process and conversions
# ----------------------------------------------------------------------------------------------


def alphas_cumprod_at(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ᾱ(t) in float64 for integer or fractional timesteps t (any shape).

    Integer-valued t index the table exactly. A fractional t interpolates log σ linearly between its
    two neighbours (k-diffusion's ``t_to_sigma``; the inverse of :func:`sigma_to_t`), ᾱ = 1/(1+σ²):
    derived from the schedule, never rounded to a neighbour.
    """
    table = alphas_cumprod.to(torch.float64)
    t = t.to(table.device)
    if not t.is_floating_point():
        return table[t.long()]
    t = t.to(torch.float64)
    if bool((t == t.round()).all()):
        return table[t.long()]
    if bool(((t < 0) | (t > len(table) - 1)).any()):
        raise ValueError(f"timesteps must lie in [0, {len(table) - 1}], got {t.min().item()}..{t.max().item()}")
    log_sigma = 0.5 * (torch.log1p(-table) - torch.log(table))
    lo = t.floor().long().clamp(max=len(table) - 2)
    w = t - lo
    ls = torch.where(w == 0, log_sigma[lo], (1 - w) * log_sigma[lo] + w * log_sigma[lo + 1])
    return torch.sigmoid(-2 * ls)  # 1/(1+σ²)


def _extract(table: torch.Tensor, t: torch.Tensor | int | float, x: torch.Tensor) -> torch.Tensor:
    """ᾱ(t) (:func:`alphas_cumprod_at`) cast to x's dtype/device and shaped (B, 1, 1, ...) to broadcast."""
    if not torch.is_tensor(t):
        t = torch.tensor([t])
    table = table.to(torch.float64)
    # a table moved to the GPU once avoids a host sync per call
    vals = alphas_cumprod_at(table, t.reshape(-1)).to(device=x.device, dtype=x.dtype)
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


def lcm_boundary_scalings(t, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """(c_skip, c_out) of a consistency model's parametrisation f(x, t) = c_skip·x + c_out·x̂0 (Song et
    al. 2023, eq. 7, on discrete t as Luo et al. 2023 / diffusers' LCM): c_skip → 1 and c_out → 0 as
    t → 0, the boundary condition f(x, 0) = x. Scalars for an int, tensors (float64) for a tensor."""
    if torch.is_tensor(t):
        s = t.to(torch.float64) * timestep_scaling
        return sigma_data ** 2 / (s ** 2 + sigma_data ** 2), s / (s ** 2 + sigma_data ** 2).sqrt()
    s = float(t) * timestep_scaling
    return sigma_data ** 2 / (s ** 2 + sigma_data ** 2), s / math.sqrt(s ** 2 + sigma_data ** 2)


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
    - ``lcm``: n of the 50 DDIM timesteps t_j = j·⌊T/50⌋ - 1 (j = 50..1) a latent consistency model is
      distilled on, evenly spaced by index (diffusers' ``LCMScheduler``; Luo et al. 2023)
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
    elif spacing == "lcm":
        if n > LCM_ORIGINAL_STEPS:
            raise ValueError(f"timestep spacing 'lcm' takes at most {LCM_ORIGINAL_STEPS} steps (the distillation's "
                             f"DDIM schedule), got {n}")
        origin = (np.arange(1, LCM_ORIGINAL_STEPS + 1) * (T // LCM_ORIGINAL_STEPS) - 1)[::-1]
        ts = origin[np.floor(np.linspace(0, LCM_ORIGINAL_STEPS, n, endpoint=False)).astype(np.int64)].copy()
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


# ----------------------------------------------------------------------------------------------
# Noise levels σ: conversions and sigma schedules (k-diffusion / Karras et al. 2022 view)
# ----------------------------------------------------------------------------------------------

SIGMA_SCHEDULES = ("default", "karras", "exponential", "polyexponential", "sgm_uniform", "simple", "beta", "ays")

# Align Your Steps (Sabour et al. 2024), the published 10-step list for Stable Diffusion 1.5 (NVIDIA's
# project page and ComfyUI's AlignYourStepsScheduler): 11 noise levels from σ_max to σ_min.
AYS_SD15_SIGMAS = (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
                   0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = √((1-ᾱ_t)/ᾱ_t) for every training timestep (float64, increasing in t; ∞ where ᾱ = 0)."""
    ac = alphas_cumprod.to(torch.float64)
    return ((1 - ac) / ac).sqrt()


def sigma_to_t(sigma, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Fractional timestep(s) of noise level(s) σ: t interpolated linearly in log σ between the two
    training timesteps around it (diffusers' ``_sigma_to_t``, k-diffusion's ``sigma_to_t``), float64.
    σ on a table entry gives that integer exactly; σ beyond the table's ends is an error."""
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).log().cpu().numpy()
    s = np.atleast_1d(np.asarray(torch.as_tensor(sigma, dtype=torch.float64).cpu(), dtype=np.float64))
    ls = np.log(s)
    lo, hi = log_sigmas[0], log_sigmas[-1]
    # σ given in float32 (diffusers' schedulers, user lists) may lie a rounding error outside the table
    if np.any(ls < lo - 1e-5) or np.any(ls > hi + 1e-5) or np.any(~np.isfinite(ls) & (ls != hi)):
        raise ValueError(f"sigma must lie in the model's range [{math.exp(lo):.6g}, {math.exp(hi):.6g}], got "
                         f"{s.min():.6g}..{s.max():.6g}")
    if np.isinf(hi):  # zero terminal SNR: σ = ∞ is t = T-1; np.interp cannot take the ∞ knot
        t = np.where(np.isinf(ls), len(log_sigmas) - 1.0,
                     np.interp(np.clip(ls, lo, log_sigmas[-2]), log_sigmas[:-1], np.arange(len(log_sigmas) - 1.0)))
    else:
        t = np.interp(np.clip(ls, lo, hi), log_sigmas, np.arange(len(log_sigmas), dtype=np.float64))
    # float64 round-off of a σ computed from a table entry (e.g. Karras' σ_min^(1/ρ))^ρ) lands within
    # 1e-9 of that integer: snap it, so the table entry is used exactly; a genuinely fractional t stays
    t = np.where(np.abs(t - np.round(t)) < 1e-9, np.round(t), t)
    return torch.from_numpy(t.reshape(np.shape(np.asarray(torch.as_tensor(sigma)))))


def t_to_sigma(t, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ(t) for integer or fractional t: σ = √((1-ᾱ(t))/ᾱ(t)) with ᾱ(t) from :func:`alphas_cumprod_at`."""
    t = torch.as_tensor(t, dtype=torch.float64)
    table = alphas_cumprod.to(torch.float64)
    if bool(((t < 0) | (t > len(table) - 1)).any()):
        raise ValueError(f"timesteps must lie in [0, {len(table) - 1}], got {t.min().item()}..{t.max().item()}")
    return sigmas_from_alphas_cumprod(alphas_cumprod_at(table, t))


def sigmas_from_timesteps(timesteps, alphas_cumprod: torch.Tensor, final_sigma: float = 0.0) -> torch.Tensor:
    """σ at each (integer or fractional) timestep, then ``final_sigma`` (0: the last step goes to the data)."""
    return torch.cat([t_to_sigma(torch.as_tensor(timesteps, dtype=torch.float64), alphas_cumprod),
                      torch.tensor([final_sigma], dtype=torch.float64)])


def sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return _append_zero(s)


def sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log σ from σ_max to σ_min (k-diffusion's ``get_sigmas_exponential``), then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """log σ = log σ_min + r^ρ (log σ_max - log σ_min), r from 1 to 0 (k-diffusion's
    ``get_sigmas_polyexponential``; ρ = 1 is :func:`sigmas_exponential`), then 0."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return _append_zero((ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp())


def sigmas_sgm_uniform(n: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``sgm_uniform``: n+1 timesteps uniform from T-1 to 0, the last dropped, σ at those
    (fractional) timesteps, then 0."""
    T = len(alphas_cumprod)
    ts = torch.linspace(T - 1, 0, n + 1, dtype=torch.float64)[:-1]
    return sigmas_from_timesteps(ts, alphas_cumprod)


def sigmas_simple(n: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``simple``: the training timesteps T-1 - ⌊i·T/n⌋, i = 0..n-1, then 0."""
    T = len(alphas_cumprod)
    ts = [T - 1 - int(i * T / n) for i in range(n)]
    return sigmas_from_timesteps(torch.tensor(ts), alphas_cumprod)


def sigmas_beta(n: int, alphas_cumprod: torch.Tensor, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """"Beta Sampling is All You Need" (Lee et al. 2024): timesteps t_i = (T-1)·F⁻¹(1 - i/n) with F the
    Beta(α, β) CDF, i = 0..n-1, then σ = 0. As the paper and ComfyUI's ``beta`` scheduler, in timestep space;
    ComfyUI rounds t and drops the duplicates (fewer steps than asked), we keep fractional t (no
    duplicates). diffusers' ``use_beta_sigmas`` instead spaces σ itself between σ_min and σ_max with
    these quantiles, a different schedule (pass its sigmas as a list to reproduce it). Needs scipy."""
    try:
        from scipy.stats import beta as beta_dist
    except ImportError as e:  # pragma: no cover - scipy is in the samplers/dev extras
        raise ImportError("the 'beta' sigma schedule needs scipy: pip install 'latentdiff[samplers]'") from e
    T = len(alphas_cumprod)
    q = 1 - np.linspace(0, 1, n, endpoint=False)
    ts = torch.from_numpy(beta_dist.ppf(q, alpha, beta) * (T - 1))
    return sigmas_from_timesteps(ts, alphas_cumprod)


def sigmas_ays(n: int, published: Sequence[float] = AYS_SD15_SIGMAS) -> torch.Tensor:
    """Align Your Steps (Sabour et al. 2024): the published list, interpolated log-linearly to n steps as
    the authors and ComfyUI do (log σ linear in the step index over [0, 1]); the last level becomes 0."""
    ref = np.log(np.asarray(published, dtype=np.float64))
    if n + 1 == len(ref):
        s = np.exp(ref)
    else:
        s = np.exp(np.interp(np.linspace(0, 1, n + 1), np.linspace(0, 1, len(ref)), ref[::-1])[::-1])
    s[-1] = 0.0
    return torch.from_numpy(s.copy())


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


def check_sigmas(sigmas) -> torch.Tensor:
    """Validate a sigma schedule: 1-D, ≥ 2 entries, strictly decreasing (no duplicate or zero-length
    steps), positive except a final 0, finite except a leading ∞ (zero terminal SNR). float64 tensor."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if s.numel() < 2:
        raise ValueError(f"a sigma schedule needs at least 2 noise levels (one step), got {s.tolist()}")
    if torch.isnan(s).any() or torch.isinf(s[1:]).any() or (s[:-1] <= 0).any() or s[-1] < 0:
        raise ValueError(f"sigmas must be positive and finite (a leading inf and a final 0 allowed), got {s.tolist()}")
    if (s[1:] >= s[:-1]).any():
        i = int(torch.nonzero(s[1:] >= s[:-1])[0])
        raise ValueError(f"sigmas must be strictly decreasing (a duplicate is a zero-length step); "
                         f"sigmas[{i}] = {s[i].item():.6g} <= sigmas[{i + 1}] = {s[i + 1].item():.6g}")
    return s


def parse_sigma_list(spec: str) -> tuple[str, list[float]]:
    """``"sigmas:14.6,7.0,...,0"`` or ``"timesteps:999,750,...,0"`` → (kind, values) (the CLI's user lists)."""
    kind, _, values = spec.partition(":")
    if kind not in ("sigmas", "timesteps") or not values:
        raise ValueError(f"Unknown sigma schedule {spec!r}; choose one of {', '.join(SIGMA_SCHEDULES)}, "
                         "'sigmas:<comma-separated list>' or 'timesteps:<comma-separated list>'")
    try:
        return kind, [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"could not read the numbers in {spec!r}") from None


def make_sigmas(
    schedule,
    num_inference_steps: int,
    alphas_cumprod: torch.Tensor,
    *,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> torch.Tensor:
    """The n+1 noise levels σ_0 > … > σ_{n-1} > σ_n = 0 of a named schedule (float64).

    ``schedule``: ``default`` (σ at :func:`make_timesteps` with ``spacing``: the model's own
    timesteps), ``karras`` (ρ = 7), ``exponential``, ``polyexponential`` (ρ = 1), ``sgm_uniform``,
    ``simple``, ``beta`` (α = β = 0.6), ``ays``; or a user list: ``"sigmas:…"``/``"timesteps:…"``
    (:func:`parse_sigma_list`), or a sequence/tensor of sigmas (a 0 is appended if missing).
    σ_min, σ_max are the table's ends σ(0), σ(T-1) (k-diffusion's and A1111's choice; diffusers takes
    the ends of its timestep spacing, the same for ``linspace``). Every result is checked by
    :func:`check_sigmas`: no duplicate or zero-length steps, the last step goes to σ = 0.
    """
    ac = alphas_cumprod_for_sampling(alphas_cumprod)
    table = sigmas_from_alphas_cumprod(ac)
    s_min, s_max = float(table[0]), float(table[-1])
    n = num_inference_steps
    if isinstance(schedule, str) and ":" in schedule:
        kind, values = parse_sigma_list(schedule)
        schedule = values if kind == "sigmas" else sigmas_from_timesteps(values, ac)
    if not isinstance(schedule, str):
        s = torch.as_tensor(schedule, dtype=torch.float64).reshape(-1)
        if s.numel() and s[-1] != 0:
            s = _append_zero(s)
        return check_sigmas(s)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {n!r}")
    if schedule == "default":
        s = sigmas_from_timesteps(make_timesteps(n, len(ac), spacing, steps_offset, ac), ac)
    elif schedule == "karras":
        s = sigmas_karras(n, s_min, s_max)
    elif schedule == "exponential":
        s = sigmas_exponential(n, s_min, s_max)
    elif schedule == "polyexponential":
        s = sigmas_polyexponential(n, s_min, s_max)
    elif schedule == "sgm_uniform":
        s = sigmas_sgm_uniform(n, ac)
    elif schedule == "simple":
        s = sigmas_simple(n, ac)
    elif schedule == "beta":
        s = sigmas_beta(n, ac)
    elif schedule == "ays":
        s = sigmas_ays(n)
    else:
        raise ValueError(f"Unknown sigma schedule {schedule!r}; choose one of {', '.join(SIGMA_SCHEDULES)}, "
                         "'sigmas:<list>', 'timesteps:<list>' or a list of sigmas")
    return check_sigmas(s)
