"""Identities of the diffusion math, in float64, and schedules against diffusers' own tables."""

import pytest
import torch
from diffusers import DDPMScheduler

from latentdiff import diffusion as D


@pytest.mark.parametrize("schedule", D.BETA_SCHEDULES)
def test_schedules_match_diffusers(schedule):
    ours = D.make_alphas_cumprod(schedule, 1000, 0.00085, 0.012)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours.float(), ref.alphas_cumprod, rtol=1e-6, atol=1e-7)
    assert torch.all(ours[1:] < ours[:-1]), "ᾱ_t must decrease"


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="scaled_linear"):
        D.make_betas("cosine")


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    ac = D.make_alphas_cumprod("linear", 1000, 1e-4, 0.02)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    return ac, x0, eps, t


def test_q_sample_then_predict_x0_roundtrip(tensors):
    ac, x0, eps, t = tensors
    x_t = D.q_sample(x0, t, eps, ac)
    torch.testing.assert_close(D.predict_x0_from_eps(x_t, t, eps, ac), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(D.predict_eps_from_x0(x_t, t, x0, ac), eps, rtol=0, atol=1e-9)


def test_v_roundtrip(tensors):
    ac, x0, eps, t = tensors
    x_t = D.q_sample(x0, t, eps, ac)
    v = D.get_v(x0, eps, t, ac)
    torch.testing.assert_close(D.predict_x0_from_v(x_t, t, v, ac), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(D.predict_eps_from_v(x_t, t, v, ac), eps, rtol=0, atol=1e-9)


def test_v_target_matches_diffusers(tensors):
    ac, x0, eps, t = tensors
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction")
    ours = D.training_target(x0.float(), eps.float(), t, ac, "v_prediction")
    torch.testing.assert_close(ours, ref.get_velocity(x0.float(), eps.float(), t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(D.q_sample(x0.float(), t, eps.float(), ac),
                               ref.add_noise(x0.float(), eps.float(), t), rtol=1e-5, atol=1e-5)


def test_q_sample_marginal_statistics():
    """q(x_t | x0) = N(√ᾱ_t x0, (1-ᾱ_t) I): check mean and variance empirically."""
    ac = D.make_alphas_cumprod("scaled_linear")
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000,), 1.5, dtype=torch.float64)
    t = 400
    x_t = D.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64), ac)
    a = float(ac[t])
    assert abs(x_t.mean().item() - a**0.5 * 1.5) < 5e-3
    assert abs(x_t.var().item() - (1 - a)) < 5e-3


def test_min_snr_weights():
    ac = D.make_alphas_cumprod("scaled_linear")
    t = torch.arange(0, 1000, 37)
    s = ac[t] / (1 - ac[t])
    w = D.min_snr_weights(t, ac, 5.0, "epsilon")
    torch.testing.assert_close(w.double(), torch.minimum(s, torch.tensor(5.0, dtype=torch.float64)) / s,
                               rtol=1e-6, atol=0)
    assert torch.all(w <= 1.0 + 1e-6) and w[-1] == pytest.approx(1.0)  # high noise: SNR < γ → weight 1
    wv = D.min_snr_weights(t, ac, 5.0, "v_prediction")
    assert torch.all(wv < w + 1e-7)


def test_offset_noise_shifts_channel_means():
    g = torch.Generator().manual_seed(0)
    plain = D.sample_noise((64, 4, 16, 16), generator=g)
    g = torch.Generator().manual_seed(0)
    off = D.sample_noise((64, 4, 16, 16), generator=g, offset_noise=1.0)
    # per-(sample, channel) means vary far more with offset noise (std ~1 vs ~1/16)
    assert off.mean(dim=(2, 3)).std() > 5 * plain.mean(dim=(2, 3)).std()


def test_per_image_generators_are_independent_of_batch():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    both = D.randn((2, 4, 8, 8), generator=gens)
    alone = D.randn((1, 4, 8, 8), generator=[torch.Generator().manual_seed(4)])
    torch.testing.assert_close(both[1:], alone)
    with pytest.raises(ValueError, match="one per image"):
        D.randn((3, 4, 8, 8), generator=gens)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 10, 25, 50])
def test_timesteps_match_diffusers_ddim(spacing, n):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ref.set_timesteps(n)
    ours = D.make_timesteps(n, 1000, spacing, steps_offset=1 if spacing == "leading" else 0)
    assert ours.tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear"])
def test_logsnr_timesteps_match_diffusers_lu_lambdas(schedule):
    """'logsnr' = diffusers' DPMSolverMultistepScheduler(use_lu_lambdas=True) wherever diffusers' list
    has no repeated timestep; where it repeats one (zero-length steps), ours stays strictly decreasing.
    (For squaredcos_cap_v2 diffusers truncates the fractional timesteps instead of rounding them.)"""
    from diffusers import DPMSolverMultistepScheduler

    kw = {"scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012},
          "linear": {"beta_start": 0.0001, "beta_end": 0.02}}.get(schedule, {})
    ac = D.make_alphas_cumprod(schedule, 1000, **kw)
    compared = 0
    for n in (2, 5, 10, 20, 25, 50, 100, 500):
        ref = DPMSolverMultistepScheduler(beta_schedule=schedule, use_lu_lambdas=True, **kw)
        ref.set_timesteps(n)
        theirs = ref.timesteps.tolist()
        ours = D.make_timesteps(n, 1000, "logsnr", alphas_cumprod=ac).tolist()
        assert len(ours) == n and ours[0] == 999 and ours[-1] == 0
        assert all(b < a for a, b in zip(ours, ours[1:]))
        if len(set(theirs)) == len(theirs):
            assert ours == theirs, n
            compared += 1
    assert compared >= 3
    with pytest.raises(ValueError, match="alphas_cumprod"):
        D.make_timesteps(10, 1000, "logsnr")


@pytest.mark.parametrize("bad", [0, -3, 1001, 2.5])
def test_bad_step_counts(bad):
    with pytest.raises(ValueError, match="num_inference_steps"):
        D.make_timesteps(bad, 1000)
