"""Noise levels: σ ↔ t conversions, the sigma schedules (against k-diffusion's and diffusers' formulas),
no duplicate or zero-length steps, user lists, zero terminal SNR."""

import math

import numpy as np
import pytest
import torch

from latentdiff import diffusion as D

AC = D.make_alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012)
NAMED = [s for s in D.SIGMA_SCHEDULES]


def test_sigma_t_round_trip_and_fractional_alpha_bar():
    table = D.sigmas_from_alphas_cumprod(AC)
    t = D.sigma_to_t(table, AC)
    assert torch.equal(t, torch.arange(1000, dtype=torch.float64))  # table σ give their integer t exactly
    frac = torch.tensor([0.25, 17.5, 500.3, 998.9])
    s = D.t_to_sigma(frac, AC)
    torch.testing.assert_close(D.sigma_to_t(s, AC), frac.double(), atol=1e-9, rtol=0)
    # ᾱ(t) between two timesteps is 1/(1+σ(t)²) with log σ interpolated, strictly between its neighbours
    a = D.alphas_cumprod_at(AC, frac.double())
    torch.testing.assert_close(a, 1 / (1 + s**2))
    lo, hi = AC[frac.floor().long()], AC[frac.floor().long() + 1]
    assert torch.all((a < lo) & (a > hi))
    # an integer-valued float t uses the table entry itself
    assert torch.equal(D.alphas_cumprod_at(AC, torch.tensor([3.0, 900.0], dtype=torch.float64)), AC[[3, 900]])


def test_sigma_outside_the_model_range_is_an_error():
    with pytest.raises(ValueError, match="range"):
        D.sigma_to_t(100.0, AC)
    with pytest.raises(ValueError, match="range"):
        D.make_sigmas("sigmas:40,2,0", 2, AC).shape and D.sigma_to_t(40.0, AC)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("n", [1, 2, 5, 10, 37, 150, 1000])
def test_every_schedule_has_no_duplicate_or_zero_length_steps_and_ends_at_zero(name, n):
    """diffusers #4122/#6477/#5689: Karras/exponential σ rounded to integer timesteps repeat steps; ours
    keep fractional t. Strictly decreasing σ and t, n steps, the last to σ = 0."""
    s = D.make_sigmas(name, n, AC, spacing="trailing")
    assert s.shape == (n + 1,) and s[-1] == 0.0
    assert torch.all(s[1:] < s[:-1]), s
    t = D.sigma_to_t(s[:-1], AC)
    assert torch.all(t[1:] < t[:-1])
    if name not in ("default", "ays"):
        assert s[0].item() == pytest.approx(D.sigmas_from_alphas_cumprod(AC)[-1].item())


def k_sampling():
    from test_k_samplers import k_sampling as load

    return load()


def test_karras_exponential_polyexponential_equal_k_diffusion():
    ks = k_sampling()
    smin, smax = D.sigmas_from_alphas_cumprod(AC)[[0, -1]].tolist()
    for n in (4, 20):
        f32 = dict(rtol=2e-6, atol=1e-7)  # k-diffusion computes in float32
        torch.testing.assert_close(D.make_sigmas("karras", n, AC), ks.get_sigmas_karras(n, smin, smax).double(), **f32)
        torch.testing.assert_close(D.make_sigmas("exponential", n, AC),
                                   ks.get_sigmas_exponential(n, smin, smax).double(), **f32)
        torch.testing.assert_close(D.sigmas_polyexponential(n, smin, smax, rho=2.0),
                                   ks.get_sigmas_polyexponential(n, smin, smax, rho=2.0).double(), **f32)


@pytest.mark.parametrize("flag,name", [("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential")])
def test_karras_exponential_equal_diffusers(flag, name):
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   timestep_spacing="linspace", **{flag: True})
    sched.set_timesteps(12)
    torch.testing.assert_close(D.make_sigmas(name, 12, AC), sched.sigmas.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(D.sigma_to_t(D.make_sigmas(name, 12, AC)[:-1], AC), sched.timesteps.double(),
                               rtol=1e-5, atol=1e-3)  # theirs from float32 σ


def test_sgm_uniform_simple_beta_ays_definitions():
    n = 10
    t = D.sigma_to_t(D.make_sigmas("sgm_uniform", n, AC)[:-1], AC)
    torch.testing.assert_close(t, torch.linspace(999, 0, n + 1, dtype=torch.float64)[:-1])
    t = D.sigma_to_t(D.make_sigmas("simple", n, AC)[:-1], AC)
    assert t.tolist() == [999 - int(i * 1000 / n) for i in range(n)]
    from scipy.stats import beta

    t = D.sigma_to_t(D.make_sigmas("beta", n, AC)[:-1], AC)
    torch.testing.assert_close(t, torch.from_numpy(999 * beta.ppf(1 - np.arange(n) / n, 0.6, 0.6)))
    ays = D.make_sigmas("ays", 10, AC)
    torch.testing.assert_close(ays[:-1], torch.tensor(D.AYS_SD15_SIGMAS[:-1], dtype=torch.float64))
    ays20 = D.make_sigmas("ays", 20, AC)  # log-linear interpolation keeps the published levels at every 2nd step
    torch.testing.assert_close(ays20[:-1:2], ays[:-1])
    mid = ays20[1:-2:2].log()
    torch.testing.assert_close(mid, (ays[:-2].log() + ays[1:-1].log()) / 2)


def test_user_lists_and_bad_input():
    s = D.make_sigmas([10.0, 2.0, 0.5], 3, AC)
    assert s.tolist() == [10.0, 2.0, 0.5, 0.0]
    s = D.make_sigmas("timesteps:999,500.5,20", 3, AC)
    torch.testing.assert_close(D.sigma_to_t(s[:-1], AC), torch.tensor([999, 500.5, 20], dtype=torch.float64))
    for bad, match in [("karas", "choose one of default, karras"), ([3.0, 3.0, 0.0], "duplicate"),
                       ([1.0, 2.0, 0.0], "decreasing"), ([2.0, -1.0], "positive"), ([0.0], "at least 2"),
                       ("sigmas:", "choose one of"), ("timesteps:1,x", "numbers"), ("timesteps:1200,3", "timesteps")]:
        with pytest.raises(ValueError, match=match):
            D.make_sigmas(bad, 3, AC)


def test_rescale_zero_terminal_snr_equals_diffusers():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    betas = D.make_betas("scaled_linear")
    ours = D.rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(ours, rescale_zero_terminal_snr(betas.float()).double(), rtol=1e-3, atol=1e-6)
    ac = D.alphas_cumprod_from_betas(ours)
    assert ac[-1] == 0.0 and ac[0] == pytest.approx(AC[0].item())
    assert math.isinf(D.sigmas_from_alphas_cumprod(ac)[-1].item())
    sampling = D.alphas_cumprod_for_sampling(ac)
    assert sampling[-1] == 2.0**-24 and torch.equal(sampling[:-1], ac[:-1])
    assert torch.equal(D.alphas_cumprod_for_sampling(AC), AC)
    s = D.make_sigmas("karras", 10, ac)
    assert s[0].item() == pytest.approx(math.sqrt((1 - 2.0**-24) / 2.0**-24))
