"""The σ-space samplers (Euler, Heun, DPM2, LMS, DPM++ 2S/SDE/2M-SDE/3M-SDE, UniPC) step for step
against diffusers' schedulers and against k-diffusion's own ``sampling.py``, same model function and
same noise; and the noise-sampler hook (Brownian tree)."""

import importlib.util
import inspect
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from latentdiff.denoisers import EpsFunction
from latentdiff.diffusion import make_alphas_cumprod, make_sigmas, sigma_to_t
from latentdiff.samplers import SAMPLERS, BrownianTreeNoiseSampler, get_sampler

SCHED = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
AC = make_alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012)


def toy_eps(x, t):
    """A smooth nonlinear stand-in for a network, continuous in t (fractional t matter)."""
    t = t.double() if torch.is_tensor(t) else torch.tensor(float(t), dtype=torch.float64)
    tt = (t.reshape(-1, *([1] * (x.ndim - 1))) / 1000.0).to(x.dtype)
    return torch.tanh(0.8 * x) * (0.5 + tt) + 0.1 * torch.sin(3 * x + tt)


def x_T(seed=0):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


class NoiseQueue:
    """Replays one seeded stream of N(0, I): two copies hand two samplers the same noise, call for call."""

    def __init__(self, seed, shape=(2, 4, 8, 8)):
        self.g, self.shape = torch.Generator().manual_seed(seed), shape

    def __call__(self, *_, **__):
        return torch.randn(self.shape, generator=self.g)


# ---------------------------------------------------------------------------------------------- diffusers

# sampler -> (diffusers class, config, state space of its prev_sample: "ve" = x̃, "vp" = x_t)
DIFFUSERS = {
    "euler": (EulerDiscreteScheduler, {}, "ve"),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, "ve"),
    "heun": (HeunDiscreteScheduler, {}, "ve"),
    "dpm2": (KDPM2DiscreteScheduler, {}, "ve"),
    "dpm2_a": (KDPM2AncestralDiscreteScheduler, {}, "ve"),
    "lms": (LMSDiscreteScheduler, {}, "ve"),
    "dpmpp_sde": (DPMSolverSDEScheduler, {}, "ve"),
    "dpmpp_2m": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2,
                                                   final_sigmas_type="zero"), "vp"),
    "dpmpp_2m_sde": (DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++", solver_order=2,
                                                       final_sigmas_type="zero"), "vp"),
    "dpmpp_3m_sde": (DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++", solver_order=3,
                                                       final_sigmas_type="zero"), "vp"),
    "unipc": (UniPCMultistepScheduler, dict(solver_order=2, solver_type="bh2", predict_x0=True,
                                            final_sigmas_type="zero"), "vp"),
}
SCHEDULE_FLAGS = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas",
                  "diffusers-beta": "use_beta_sigmas"}



def diffusers_scheduler(name, schedule, n):
    cls, cfg, space = DIFFUSERS[name]
    kw = dict(SCHED, **cfg)
    if schedule in SCHEDULE_FLAGS:
        kw[SCHEDULE_FLAGS[schedule]] = True
        kw["timestep_spacing"] = "linspace"  # diffusers takes σ_min/σ_max at its spacing's ends: the table's here
    elif schedule.startswith("default-"):
        kw["timestep_spacing"] = schedule.split("-", 1)[1]
        kw["steps_offset"] = 1 if kw["timestep_spacing"] == "leading" else 0
    sched = cls(**kw)
    sched.set_timesteps(n)
    return sched, space


def run_diffusers(sched, x_vp, model, generator=None, noise_sampler=None):
    """Trajectory of x̃ (VE schedulers) or x_t (VP) after each full step."""
    if noise_sampler is not None:
        sched.noise_sampler = noise_sampler  # DPMSolverSDE: replace its Brownian tree by the shared noise
    x = x_vp * sched.init_noise_sigma if sched.init_noise_sigma == 1.0 else \
        x_vp * math.sqrt(1 + float(sched.sigmas[0]) ** 2)  # same x̃ both sides (see docs/samplers.md)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    traj = []
    for t in sched.timesteps:
        eps = model(sched.scale_model_input(x, t), t)
        kw = {"generator": generator} if takes_generator else {}
        x = sched.step(eps, t, x, **kw).prev_sample
        if getattr(sched, "state_in_first_order", True):  # two-stage schedulers: only completed steps
            traj.append(x)
    if not getattr(sched, "state_in_first_order", True):  # Heun/KDPM2 end on a one-stage step to σ = 0
        traj.append(x)
    return traj


def run_ours(name, x_vp, sigmas, model, space, **kw):
    """Our trajectory in the model's scaling x_t (what the callback reports)."""
    traj = []
    get_sampler(name)(EpsFunction(model, AC), x_vp, sigmas, callback=lambda d: traj.append(d["x"]), **kw)
    return traj


def to_model_scaling(traj, sigmas, space):
    """diffusers' σ schedulers hold x̃ = x_t/√ᾱ (|x̃| ~ σ up to 14.6): compare in the model's scaling x_t."""
    sig = sigmas.tolist()
    return traj if space == "vp" else [x / math.sqrt(1 + sig[i + 1] ** 2) for i, x in enumerate(traj)]


def seen_by(sched, model):
    """``model`` as diffusers' scheduler calls it. DPMSolverMultistep/UniPC cast fractional timesteps to
    int64 (rounded for Karras σ, truncated otherwise) and KDPM2 rounds the schedule's (not the midpoints'):
    the network there sees a t up to 1 away from the σ the solver uses. We pass the fractional t; to
    compare the solvers on the same network outputs, our k-th call is answered at diffusers' k-th t,
    after checking the two lie within 1 of each other (so a wrong σ still fails)."""
    calls = iter(sched.timesteps.double().tolist())

    def fn(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        theirs = next(calls)
        assert (t - theirs).abs().max() <= 1, (t[0].item(), theirs)
        return model(x, torch.full_like(t, theirs))

    return fn


def assert_close(ours, ref, tol=1e-4):
    assert len(ours) == len(ref), (len(ours), len(ref))
    worst = max((a - b).abs().max().item() for a, b in zip(ours, ref))
    assert worst <= tol, f"max abs difference {worst:.2e} over the trajectory"


def our_sigmas(schedule, n, sched=None):
    if schedule == "diffusers-beta":  # diffusers' σ-space beta schedule, handed to us as a user list
        return torch.unique_consecutive(sched.sigmas.double())
    if schedule.startswith("default-"):  # each diffusers scheduler has its own "leading"; take its timesteps
        ts = torch.unique_consecutive(sched.timesteps.double())
        if isinstance(sched, (KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler, DPMSolverSDEScheduler)):
            ts = sched.timesteps.double()[0::2]  # their odd entries are the midpoints' t
        if sched.timesteps.is_floating_point():  # Euler family: also check our own spacing gives them
            spacing = schedule.split("-", 1)[1]
            ours = make_sigmas("default", n, AC, spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
            torch.testing.assert_close(ours[:-1], make_sigmas("timesteps:" + ",".join(map(str, ts.tolist())),
                                                              n, AC)[:-1])
        return make_sigmas("timesteps:" + ",".join(str(int(t)) for t in ts.tolist()), n, AC)
    return make_sigmas(schedule, n, AC)


CASES = [(name, schedule) for name in DIFFUSERS if name != "dpmpp_3m_sde"
         for schedule in ("karras", "exponential", "diffusers-beta", "default-leading", "default-trailing")
         if not (name == "euler_a" and schedule in SCHEDULE_FLAGS)]  # EulerAncestral has no σ options


@pytest.mark.parametrize("name,schedule", CASES)
@pytest.mark.parametrize("n", [8, 15])
def test_matches_diffusers_step_for_step(name, schedule, n):
    sched, space = diffusers_scheduler(name, schedule, n)
    sigmas = our_sigmas(schedule, n, sched)
    # the schedule itself: our σ are diffusers' (float32) σ
    ref_sigmas = sched.sigmas.double()
    ref_sigmas = torch.unique_consecutive(ref_sigmas)  # two-stage schedulers repeat each interior σ
    torch.testing.assert_close(sigmas, ref_sigmas, rtol=1e-5, atol=1e-6)
    # the solver: run on diffusers' float32 σ exactly (their rounding of σ alone moves a stochastic
    # trajectory by ~1e-4, as much as the tolerance)
    sigmas = ref_sigmas
    ref = run_diffusers(sched, x_T(), toy_eps, generator=torch.Generator().manual_seed(1),
                        noise_sampler=NoiseQueue(2) if name == "dpmpp_sde" else None)
    ours = run_ours(name, x_T(), sigmas, seen_by(sched, toy_eps), space, generator=torch.Generator().manual_seed(1),
                    **({"noise_sampler": NoiseQueue(2)} if name == "dpmpp_sde" else {}))
    assert_close(ours, to_model_scaling(ref, sigmas, space))


def test_euler_a_matches_diffusers_on_karras_sigmas():
    """EulerAncestralDiscrete has no Karras option: give it our Karras σ (and their fractional t)."""
    n = 12
    sigmas = make_sigmas("karras", n, AC)
    sched = EulerAncestralDiscreteScheduler(**SCHED, timestep_spacing="linspace")
    sched.set_timesteps(n)
    sched.sigmas = sigmas.float()
    sched.timesteps = sigma_to_t(sigmas[:-1], AC).float()
    ref = run_diffusers(sched, x_T(), toy_eps, generator=torch.Generator().manual_seed(3))
    ours = run_ours("euler_a", x_T(), sigmas, toy_eps, "ve", generator=torch.Generator().manual_seed(3))
    assert_close(ours, to_model_scaling(ref, sigmas, "ve"))


@pytest.mark.parametrize("schedule", ["karras", "default-trailing"])
def test_dpmpp_3m_sde_matches_diffusers_until_its_third_order_term(schedule):
    """diffusers' sde-dpmsolver++ with solver_order=3 is another method than k-diffusion's (A1111's and
    ComfyUI's) DPM++ 3M SDE, which we follow: its second-order step uses the midpoint coefficient
    (1-e^{-2h})/2 where k-diffusion uses φ₂ = 1 - (1-e^{-2h})/(2h), and its third-order term has
    α_t((1-e^{-2h}-2h)/(2h)² - 1/2) where the exact integral (test below) has + 1/2. The first
    (first-order) step agrees; from the second on, the trajectories differ."""
    n = 16
    sched, space = diffusers_scheduler("dpmpp_3m_sde", schedule, n)
    ref = run_diffusers(sched, x_T(), toy_eps, generator=torch.Generator().manual_seed(1))
    ours = run_ours("dpmpp_3m_sde", x_T(), sched.sigmas.double(), seen_by(sched, toy_eps), space,
                    generator=torch.Generator().manual_seed(1))
    assert_close(ours[:1], ref[:1])
    assert (ours[1] - ref[1]).abs().max() > 1e-3  # the documented disagreement, seen where it starts


def test_third_order_sde_coefficient_is_the_exact_integral():
    """SDE-DPM-Solver++: the D2 term's coefficient is (1/(2h²)) ∫_0^h 2 e^{-2u} (h-u)² du, computed here by
    quadrature; k-diffusion's -φ₃ (ours) equals it, diffusers' coefficient does not."""
    from scipy.integrate import quad

    for h in (0.05, 0.3, 1.0):
        exact = quad(lambda u, h=h: 2 * math.exp(-2 * u) * (h - u) ** 2, 0, h)[0] / (2 * h * h)
        h_eta = 2 * h
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        ours = -(phi_2 / h_eta - 0.5)
        theirs = (1 - math.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5
        assert abs(ours - exact) < 1e-10 and abs(theirs - exact) > 0.5


# ---------------------------------------------------------------------------------------------- k-diffusion


def k_sampling():
    """k-diffusion's sampling.py without its package __init__ (which imports training-only packages)."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed (README's set-up: pip install --no-deps k-diffusion==0.1.1.post1)")
    root = Path(spec.submodule_search_locations[0])
    if True:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = [str(root)]
        saved = sys.modules.get("k_diffusion")
        sys.modules["k_diffusion"] = pkg
        try:
            utils = types.ModuleType("k_diffusion.utils")
            utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
            sys.modules["k_diffusion.utils"] = utils
            mod_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
            mod = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(mod)
            sys.modules["k_diffusion.sampling"] = mod
        finally:
            if saved is not None:
                sys.modules["k_diffusion"] = saved
    return sys.modules["k_diffusion.sampling"]


def k_model(x, sigma):
    """k-diffusion's DiscreteEpsDDPMDenoiser, unquantised: D(x̃; σ) = x̃ - σ ε(x̃/√(1+σ²), t(σ))."""
    s = float(sigma.reshape(-1)[0])
    t = sigma_to_t(s, AC).expand(x.shape[0])
    return x - s * toy_eps(x / math.sqrt(1 + s * s), t)


K_FUNCS = {"euler": "sample_euler", "euler_a": "sample_euler_ancestral", "heun": "sample_heun",
           "dpm2": "sample_dpm_2", "dpm2_a": "sample_dpm_2_ancestral", "lms": "sample_lms",
           "dpmpp_2s_a": "sample_dpmpp_2s_ancestral", "dpmpp_sde": "sample_dpmpp_sde",
           "dpmpp_2m": "sample_dpmpp_2m", "dpmpp_2m_sde": "sample_dpmpp_2m_sde", "dpmpp_3m_sde": "sample_dpmpp_3m_sde"}
STOCHASTIC = {"euler_a", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"}


@pytest.mark.parametrize("name", sorted(K_FUNCS))
@pytest.mark.parametrize("schedule", ["karras", "exponential", "sgm_uniform"])
def test_matches_k_diffusion(name, schedule):
    ks = k_sampling()
    n = 10
    sigmas = make_sigmas(schedule, n, AC)
    ref, ours = [], []
    kw = {"noise_sampler": NoiseQueue(5)} if name in STOCHASTIC else {}
    x0 = x_T() * math.sqrt(1 + sigmas[0].item() ** 2)
    getattr(ks, K_FUNCS[name])(k_model, x0, sigmas.float(), callback=lambda d: ref.append(d["denoised"]),
                               disable=True, **kw)
    kw = {"noise_sampler": NoiseQueue(5)} if name in STOCHASTIC else {}
    out = get_sampler(name)(EpsFunction(toy_eps, AC), x_T(), sigmas, callback=lambda d: ours.append(d["denoised"]),
                            **kw)
    assert_close(ours, ref)  # x̂0 of every step
    k_out = getattr(ks, K_FUNCS[name])(k_model, x0, sigmas.float(), disable=True,
                                       **({"noise_sampler": NoiseQueue(5)} if name in STOCHASTIC else {}))
    torch.testing.assert_close(out, k_out, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- noise hook


def test_noise_sampler_hook_replaces_generator_noise():
    sigmas = make_sigmas("karras", 6, AC)
    d = EpsFunction(toy_eps, AC)
    for name in sorted(STOCHASTIC):
        a = get_sampler(name)(d, x_T(), sigmas, noise_sampler=NoiseQueue(7))
        b = get_sampler(name)(d, x_T(), sigmas, noise_sampler=NoiseQueue(7))
        c = get_sampler(name)(d, x_T(), sigmas, noise_sampler=NoiseQueue(8))
        g = get_sampler(name)(d, x_T(), sigmas, generator=torch.Generator().manual_seed(70))
        assert torch.equal(a, b), name
        assert (a - c).abs().max() > 1e-3 and (a - g).abs().max() > 1e-3, name


def test_brownian_tree_makes_sde_samplers_converge_across_step_counts():
    """With one Brownian path per image, an SDE sampler at 20 and at 40 steps solves the same SDE path:
    the images are far closer than with fresh per-step noise (k-diffusion's reason for the tree)."""
    pytest.importorskip("torchsde")
    d = EpsFunction(toy_eps, AC)
    x = x_T()
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "euler_a"):
        outs = {}
        for n in (20, 40):
            sigmas = make_sigmas("karras", n, AC)
            tree = BrownianTreeNoiseSampler(x, sigmas[-2].item(), sigmas[0].item(), seed=[11, 12])
            outs["tree", n] = get_sampler(name)(d, x, sigmas, noise_sampler=tree)
            outs["gen", n] = get_sampler(name)(d, x, sigmas, generator=torch.Generator().manual_seed(n))
        tree_gap = (outs["tree", 20] - outs["tree", 40]).pow(2).mean().sqrt()
        gen_gap = (outs["gen", 20] - outs["gen", 40]).pow(2).mean().sqrt()
        assert tree_gap < 0.5 * gen_gap, (name, tree_gap.item(), gen_gap.item())


def test_brownian_tree_is_per_image():
    """Image i's noise depends only on seed i: the same seed alone or in a batch gives the same image."""
    pytest.importorskip("torchsde")
    d = EpsFunction(toy_eps, AC)
    sigmas = make_sigmas("karras", 8, AC)
    x = x_T()
    lo, hi = sigmas[-2].item(), sigmas[0].item()
    both = get_sampler("dpmpp_sde")(d, x, sigmas, noise_sampler=BrownianTreeNoiseSampler(x, lo, hi, seed=[1, 2]))
    alone = get_sampler("dpmpp_sde")(d, x[1:], sigmas, noise_sampler=BrownianTreeNoiseSampler(x[1:], lo, hi, seed=[2]))
    torch.testing.assert_close(both[1:], alone, atol=1e-6, rtol=0)


def test_registry_has_every_sampler_of_the_issue():
    assert set(SAMPLERS) >= {"euler", "euler_a", "heun", "dpm2", "dpm2_a", "lms", "dpmpp_2s_a", "dpmpp_sde",
                             "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "ddpm", "ddim", "dpmpp_1"}
    with pytest.raises(ValueError, match="euler_a"):
        get_sampler("euler_ancestral")
