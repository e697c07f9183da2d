"""Denoisers: the one adapter that calls a diffusers UNet, and the guidance wrappers around it.

Every denoiser is a callable ``d(x_t, t, **cond) -> eps`` carrying ``d.alphas_cumprod``
(float64). Samplers call ``d(x_t, t)``; conditioning is bound by the wrappers:

    UNetDenoiser(unet, alphas_cumprod, "epsilon")            # x_t, t, encoder_hidden_states -> eps
      └ ClassifierFreeGuidance(inner, cond, uncond, scale)   # binds text; one batched forward
        (or ComposableGuidance(inner, WeightedConds, uncond, scale): "a AND b :w", one forward too)
          └ ClassifierGuidance(inner, log_prob, scale)       # adds -s √(1-ᾱ_t) ∇ log p(y|x_t)

The wrappers compose in any order and accept any inner denoiser.
"""

from __future__ import annotations

from typing import Callable

import torch

from .diffusion import PREDICTION_TYPES, _extract, predict_eps_from_v


class EpsFunction:
    """Wrap a plain function ``fn(x_t, t) -> eps`` (e.g. an analytic score) as a denoiser."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], alphas_cumprod: torch.Tensor):
        self.fn = fn
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        return self.fn(x, t)


class UNetDenoiser:
    """The only code that calls a diffusers ``UNet2DConditionModel``.

    Returns ε̂ whatever the network predicts: v-prediction outputs are converted with
    ε̂ = √(1-ᾱ_t) x_t + √ᾱ_t v. ``t`` is a long tensor of training timesteps or a float tensor of
    fractional ones (σ-space samplers); the U-Net gets it as is (its sinusoidal embedding is continuous)
    and ᾱ(t) for the conversion is interpolated, never rounded (:func:`latentdiff.diffusion.alphas_cumprod_at`).

    ``concat`` (B, C', h, w), optional: extra input channels appended to x_t for the network only
    (a 9-channel inpainting U-Net sees [x_t, mask, masked-image latents], diffusers' layout); it is
    repeated when guidance batches several copies of x_t.
    """

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 concat: torch.Tensor | None = None, dtype: torch.dtype | None = None, cudagraphs: bool = False):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
        self.unet = unet
        # the network's compute dtype, looked up once: diffusers' ``unet.dtype`` walks every submodule
        # (~1 ms for the emoji U-Net, as long as a whole step of the tiny one's Python)
        self.dtype = unet.dtype if dtype is None else dtype
        # a U-Net compiled with CUDA graphs ("reduce-overhead") writes every output into the same memory:
        # each call starts a new graph step and the output is copied before the next one overwrites it
        self.cudagraphs = cudagraphs
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.prediction_type = prediction_type
        self.concat = concat

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *, cond: torch.Tensor, **unet_kwargs) -> torch.Tensor:
        # x: (B, C, h, w) latents; t: (B,) long timesteps; cond: (B, 77, D) text embeddings
        dtype = self.dtype
        t = t if torch.is_tensor(t) else torch.tensor([t] * x.shape[0])
        x_in = x
        if self.concat is not None:
            extra = self.concat.to(x.dtype)
            x_in = torch.cat([x, extra.repeat(x.shape[0] // extra.shape[0], 1, 1, 1)], dim=1)
        t_net = t.float() if t.is_floating_point() else t  # float32 like diffusers' σ schedulers (mps has no float64)
        # without autograd (sampling), inference mode also skips autograd's per-op bookkeeping (version
        # counters, view tracking): the same numbers, ~4% less time for the tiny U-Net on CPU. Under
        # enable_grad (a loss or guidance through the network) the forward records its graph as usual.
        with torch.inference_mode(not torch.is_grad_enabled()):
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = self.unet(x_in.to(dtype), t_net.to(x.device), encoder_hidden_states=cond.to(dtype),
                            return_dict=False, **unet_kwargs)[0]
        out = out.to(x.dtype, copy=self.cudagraphs)
        if self.prediction_type == "v_prediction":
            out = predict_eps_from_v(x, t, out, self.alphas_cumprod)
        return out


class ScheduledConditioning:
    """Conditioning that depends on the step (A1111's prompt editing ``[from:to:when]`` and
    alternation ``[a|b]``): ``runs`` = [(end_step, embeddings), ...], embeddings used for the steps
    before ``end_step``. The step of a call is read from its level: the number of ``levels`` (the
    sampler's decreasing timesteps or sigmas) above t, so every sampler gets it without knowing, and
    a second evaluation at the next level (Heun) already uses the next step's text."""

    def __init__(self, runs: list[tuple[int, torch.Tensor]], levels):
        shapes = {tuple(c.shape) for _, c in runs}
        if len(shapes) != 1:
            raise ValueError(f"scheduled conditionings must share one shape, got {sorted(shapes)}")
        self.runs = runs
        self.levels = torch.as_tensor(levels, dtype=torch.float64).flatten()
        self.shape = runs[0][1].shape

    def at(self, t) -> torch.Tensor:
        level = float(t.reshape(-1)[0]) if torch.is_tensor(t) else float(t)
        step = int((self.levels > level + 1e-9).sum())
        for end, cond in self.runs:
            if step < end:
                return cond
        return self.runs[-1][1]


def cond_at(cond, t) -> torch.Tensor:
    """The embeddings to use at level t: ``cond`` itself, or its value at that step when scheduled."""
    return cond.at(t) if isinstance(cond, ScheduledConditioning) else cond


class Conditioned:
    """Bind fixed (or step-scheduled) conditioning to a denoiser (no guidance)."""

    def __init__(self, inner, cond):
        self.inner, self.cond = inner, cond
        self.alphas_cumprod = inner.alphas_cumprod

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        return self.inner(x, t, cond=cond_at(self.cond, t), **kw)


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022): ε̂ = ε(x, ∅) + w (ε(x, c) - ε(x, ∅)).

    ``uncond`` is the embedding of "" or of a negative prompt. Both halves run in one batched
    forward. ``guidance_rescale`` > 0 rescales the guided ε̂ toward the conditional one's standard
    deviation (Lin et al. 2023, §3.4), as diffusers' ``rescale_noise_cfg`` does.
    With ``scale == 1`` only the conditional half is evaluated.
    """

    def __init__(self, inner, cond, uncond, scale: float, guidance_rescale: float = 0.0):
        if cond.shape != uncond.shape:
            raise ValueError(f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} embeddings differ in shape")
        self.inner, self.cond, self.uncond = inner, cond, uncond
        self.scale, self.guidance_rescale = float(scale), float(guidance_rescale)
        self.alphas_cumprod = inner.alphas_cumprod

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        cond = cond_at(self.cond, t)
        if self.scale == 1.0:
            return self.inner(x, t, cond=cond, **kw)
        t2 = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim else t
        eps_uncond, eps_cond = self.inner(torch.cat([x, x]), t2, cond=torch.cat([cond_at(self.uncond, t), cond]),
                                          **kw).chunk(2)
        eps = eps_uncond + self.scale * (eps_cond - eps_uncond)
        if self.guidance_rescale > 0:
            dims = list(range(1, eps.ndim))
            std_cond = eps_cond.std(dim=dims, keepdim=True)
            std_cfg = eps.std(dim=dims, keepdim=True)
            rescaled = eps * (std_cond / std_cfg)
            eps = self.guidance_rescale * rescaled + (1 - self.guidance_rescale) * eps
        return eps


class WeightedConds:
    """The conditionings of composable prompts ("a AND b :0.5"): ``conds`` K conditionings (tensors
    or :class:`ScheduledConditioning`) of one shape (B, L, D), part k of every prompt; ``weights``
    (B, K), 0 where a prompt has fewer than K parts (its slot holds a copy of its first part)."""

    def __init__(self, conds: list, weights: torch.Tensor):
        if not conds or weights.ndim != 2 or weights.shape[1] != len(conds):
            raise ValueError(f"weights {tuple(weights.shape)} do not match {len(conds)} conditionings")
        self.conds, self.weights = list(conds), weights

    @property
    def shape(self):
        return self.conds[0].shape


class ComposableGuidance:
    """Composable diffusion (Liu et al. 2022, eq. 10; A1111's ``AND``): the text parts c_1..c_K of a
    prompt, weights w_k, guide together: ε̂ = ε(x, ∅) + s Σ_k w_k (ε(x, c_k) − ε(x, ∅)). All K+1
    conditionings run in one batched forward. One part of weight 1 is classifier-free guidance."""

    def __init__(self, inner, conds: WeightedConds, uncond, scale: float):
        if tuple(conds.shape) != tuple(uncond.shape):
            raise ValueError(f"cond {tuple(conds.shape)} and uncond {tuple(uncond.shape)} embeddings differ in shape")
        self.inner, self.conds, self.uncond, self.scale = inner, conds, uncond, float(scale)
        self.alphas_cumprod = inner.alphas_cumprod

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        k = len(self.conds.conds)
        tk = t.repeat(k + 1) if torch.is_tensor(t) and t.ndim else t
        cond = torch.cat([cond_at(self.uncond, t)] + [cond_at(c, t) for c in self.conds.conds])
        eps = self.inner(x.repeat(k + 1, *([1] * (x.ndim - 1))), tk, cond=cond, **kw).chunk(k + 1)
        w = self.conds.weights.to(x.device, x.dtype)
        guided = sum(w[:, i].view(-1, *([1] * (x.ndim - 1))) * (eps[i + 1] - eps[0]) for i in range(k))
        return eps[0] + self.scale * guided


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2 / eq. 14) for ε-based samplers:

        ε̂ = ε_θ(x_t) - s · √(1-ᾱ_t) · ∇_{x_t} log p_φ(y | x_t, t)

    ``log_prob(x_t, t) -> (B,)`` is any differentiable function (a noise-aware classifier's
    log-softmax at the target class, or an analytic one). The gradient is taken with respect to x_t
    only, under ``torch.enable_grad()`` inside the otherwise no-grad sampler. ``scale`` is a number
    or a function of the timestep (a scale schedule; an int at training timesteps, a float between them).
    """

    def __init__(self, inner, log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 scale: float | Callable[[int], float]):
        self.inner, self.log_prob, self.scale = inner, log_prob, scale
        self.alphas_cumprod = inner.alphas_cumprod

    def grad_log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            lp = self.log_prob(x_in, t)
            assert lp.shape == (x.shape[0],), f"log_prob must return shape (B,), got {tuple(lp.shape)}"
            (grad,) = torch.autograd.grad(lp.sum(), x_in)
        return grad

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        eps = self.inner(x, t, **kw)
        t0 = t.reshape(-1)[0].item() if torch.is_tensor(t) else t
        t0 = int(t0) if t0 == int(t0) else float(t0)  # fractional between training timesteps (σ samplers)
        s = self.scale(t0) if callable(self.scale) else float(self.scale)
        if s == 0.0:
            return eps
        sigma = _extract(self.alphas_cumprod, t0, x).mul(-1).add(1).sqrt()  # √(1-ᾱ_t), ᾱ(t) never rounded
        return eps - s * sigma * self.grad_log_prob(x, t)
