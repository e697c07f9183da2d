"""The pipeline with the σ-space samplers and schedules: diffusers' StableDiffusionPipeline gives the same
image; A1111 names; the noise-sampler option; zero-terminal-SNR v-prediction models."""

import json

import numpy as np
import pytest
import torch

from latentdiff.diffusion import make_sigmas
from latentdiff.samplers import SAMPLERS

KW = dict(num_inference_steps=8, guidance_scale=4.0, output_type="np")
PROMPTS = ["red apple", "cat"]


@pytest.fixture(scope="module")
def sd(tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(sd, scheduler, **kw):
    sd.scheduler = scheduler
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    return sd(PROMPTS, generator=gens, height=32, width=32, **{**KW, **kw}).images


def test_euler_karras_gives_diffusers_image(tiny_pipe, sd):
    """Our Karras σ handed to diffusers' EulerDiscrete (the tiny model's leading spacing, whose initial
    noise scale √(1+σ_max²) is ours), same seeds: the same image."""
    from diffusers import EulerDiscreteScheduler

    ours = tiny_pipe(PROMPTS, seed=[3, 4], sampler="euler", sigma_schedule="karras", **KW).images
    sigmas = make_sigmas("karras", KW["num_inference_steps"], tiny_pipe.alphas_cumprod)
    ref = theirs(sd, EulerDiscreteScheduler.from_config(sd.scheduler.config), num_inference_steps=None,
                 sigmas=sigmas[:-1].tolist())
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_euler_karras_matches_use_karras_sigmas_up_to_the_initial_noise_scale(tiny_pipe, sd):
    """diffusers' use_karras_sigmas (with linspace spacing, whose ends are the table's: our σ exactly)
    starts from σ_max·noise where we start from √(1+σ_max²)·noise (x_T ~ N(0, I) in the model's
    scaling, as DDIM and diffusers' leading spacing). Given the same x̃_T the images agree."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(sd.scheduler.config, use_karras_sigmas=True,
                                               timestep_spacing="linspace")
    ref = theirs(sd, sched)
    sigma_max = float(make_sigmas("karras", 8, tiny_pipe.alphas_cumprod)[0])
    noise = torch.cat([torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    ours = tiny_pipe(PROMPTS, latents=noise * sigma_max / np.sqrt(1 + sigma_max**2), sampler="euler",
                     sigma_schedule="karras", **KW).images
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_dpmpp_2m_karras_gives_diffusers_image(tiny_pipe, sd):
    """DPMSolverMultistep(use_karras_sigmas) rounds the timesteps its U-Net sees (we pass the fractional
    ones); at 8 steps the images still agree within 1e-3."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler.from_config(sd.scheduler.config, use_karras_sigmas=True, solver_order=2,
                                                    algorithm_type="dpmsolver++", final_sigmas_type="zero")
    ref = theirs(sd, sched)
    ours = tiny_pipe(PROMPTS, seed=[3, 4], sampler="DPM++ 2M Karras", **KW).images
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_a1111_names_and_parameters(tiny_pipe):
    a = tiny_pipe("x", seed=1, sampler="DPM++ SDE Karras", num_inference_steps=3, output_type="latent")
    b = tiny_pipe("x", seed=1, sampler="dpmpp_sde", sigma_schedule="karras", num_inference_steps=3,
                  output_type="latent")
    assert torch.equal(a.latents, b.latents)
    p = a.parameters[0]
    assert (p["sampler"], p["sigma_schedule"], p["a1111_sampler"]) == ("dpmpp_sde", "karras", "DPM++ SDE Karras")
    assert tiny_pipe("x", seed=1, sampler="Euler a", num_inference_steps=2,
                     output_type="latent").parameters[0]["a1111_sampler"] == "Euler a"
    with pytest.raises(ValueError, match="DPM\\+\\+ 2M.*Karras"):
        tiny_pipe("x", sampler="DPM++ 4M Karras")
    with pytest.raises(ValueError, match="karras"):
        tiny_pipe("x", sampler="DPM++ 2M Karras", sigma_schedule="exponential")


@pytest.mark.parametrize("schedule,match", [("kerras", "karras, exponential"), ("sigmas:3,5,1", "decreasing"),
                                            ("sigmas:3,3,1", "duplicate"), ("timesteps:abc", "numbers")])
def test_bad_schedules_are_value_errors_naming_the_valid_ones(tiny_pipe, schedule, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe("x", sampler="euler", sigma_schedule=schedule, num_inference_steps=3)


def test_user_sigma_list_is_used(tiny_pipe):
    seen = []
    tiny_pipe("x", seed=0, sampler="euler", sigma_schedule=[14.0, 3.0, 0.5], output_type="latent",
              callback=lambda d: seen.append(d["sigma"]))
    assert seen == [14.0, 3.0, 0.5]  # and a final 0 appended: three steps


def test_brownian_noise_is_per_image_and_recorded(tiny_pipe):
    pytest.importorskip("torchsde")
    kw = dict(sampler="dpmpp_2m_sde", sigma_schedule="karras", num_inference_steps=4, output_type="latent",
              noise_sampler="brownian")
    both = tiny_pipe(["x", "x"], seed=[5, 6], **kw)
    alone = tiny_pipe("x", seed=6, **kw)
    torch.testing.assert_close(both.latents[1:], alone.latents, atol=5e-4, rtol=0)  # batched-U-Net float noise
    assert both.parameters[0]["noise_sampler"] == "brownian"
    plain = tiny_pipe("x", seed=6, **{**kw, "noise_sampler": None})
    assert (plain.latents - alone.latents).abs().max() > 0.1


def test_cli_schedule_and_a1111_name_round_trip(tiny_pipeline_dir, tmp_path):
    from PIL import Image

    from latentdiff.cli import PNG_KEY, main

    assert main(["generate", "red apple", "--model", str(tiny_pipeline_dir), "--seed", "2", "--steps", "3",
                 "--sampler", "DPM++ 2M SDE", "--schedule", "exponential", "--out", str(tmp_path / "a")]) == 0
    png = tmp_path / "a" / "red_apple-2.png"
    params = json.loads(Image.open(png).text[PNG_KEY])
    assert params["sigma_schedule"] == "exponential" and params["sampler"] == "dpmpp_2m_sde"
    assert "Sampler: DPM++ 2M SDE Exponential" in Image.open(png).text["parameters"]
    assert main(["generate", "--from-png", str(png), "--model", str(tiny_pipeline_dir),
                 "--out", str(tmp_path / "b")]) == 0
    a = np.asarray(Image.open(png)).astype(int)
    b = np.asarray(Image.open(tmp_path / "b" / "red_apple-2.png")).astype(int)
    assert np.abs(a - b).max() <= 1
    assert main(["generate", "x", "--model", str(tiny_pipeline_dir), "--schedule", "nope"]) == 2


# ---------------------------------------------------------------------------------------------- zero terminal SNR


@pytest.fixture(scope="module")
def zero_snr_dir(tiny_config, tmp_path_factory):
    """The tiny model as a v-prediction model on a zero-terminal-SNR schedule with trailing spacing (Lin et al.)."""
    import dataclasses

    from latentdiff.pipelines import TextToImagePipeline

    sched = dataclasses.replace(tiny_config.scheduler, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                timestep_spacing="trailing", steps_offset=0)
    path = tmp_path_factory.mktemp("zsnr") / "pipe"
    TextToImagePipeline.from_config(dataclasses.replace(tiny_config, scheduler=sched), seed=0).save_pretrained(path)
    return path


def test_zero_snr_config_round_trips_and_has_alpha_bar_zero(zero_snr_dir):
    from latentdiff.pipelines import TextToImagePipeline

    cfg = json.loads((zero_snr_dir / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["rescale_betas_zero_snr"] is True
    pipe = TextToImagePipeline.from_pretrained(zero_snr_dir)
    assert pipe.scheduler_config.alphas_cumprod()[-1] == 0.0  # the model's table
    assert pipe.alphas_cumprod[-1] == 2.0**-24  # what the samplers use, as diffusers' σ schedulers


@pytest.mark.parametrize("name,cls", [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler")])
def test_zero_snr_v_prediction_matches_diffusers(zero_snr_dir, name, cls):
    import diffusers
    from diffusers import StableDiffusionPipeline

    from latentdiff.pipelines import TextToImagePipeline

    ours = TextToImagePipeline.from_pretrained(zero_snr_dir)
    sd = StableDiffusionPipeline.from_pretrained(zero_snr_dir, safety_checker=None)
    sd.set_progress_bar_config(disable=True)
    sched = getattr(diffusers, cls).from_config(sd.scheduler.config)
    assert sched.config.rescale_betas_zero_snr and sched.config.timestep_spacing == "trailing"
    a = ours(PROMPTS, seed=[3, 4], sampler=name, **KW).images
    b = theirs(sd, sched)
    assert np.isfinite(a).all()
    # DDIM: diffusers steps from ᾱ_T = 0 exactly, we from 2⁻²⁴ (relative √ᾱ = 2⁻¹² on the first x̂0)
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def zero_snr_pipe(zero_snr_dir):
    from latentdiff.pipelines import TextToImagePipeline

    return TextToImagePipeline.from_pretrained(zero_snr_dir)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_handles_zero_terminal_snr(zero_snr_pipe, sampler):
    pipe = zero_snr_pipe
    for schedule in ("default", "karras"):
        # two steps: the first starts from σ_max ≈ 4096; no CFG (one U-Net half) keeps it cheap
        out = pipe("x", seed=0, sampler=sampler, sigma_schedule=schedule, num_inference_steps=2,
                   guidance_scale=1.0, output_type="latent")
        assert torch.isfinite(out.latents).all(), (sampler, schedule)


def test_sampler_report_rows_carry_schedule_and_nfe_and_plot(tiny_pipe, tmp_path):
    from PIL import Image

    from latentdiff.evaluation import plot_sampler_report, sampler_report

    r = sampler_report(tiny_pipe, ["red apple", "cat"], {}, None, samplers=["euler", "heun", "DPM++ 2M Karras"],
                       steps=(2, 3), schedules=("default", "karras"), reference_steps=8, progress=False)
    got = [(row["sampler"], row["schedule"], row["steps"], row["nfe"]) for row in r["rows"]]
    assert got[:4] == [("euler", "default", 2, 2), ("euler", "default", 3, 3), ("euler", "karras", 2, 2),
                       ("euler", "karras", 3, 3)]
    assert ("heun", "karras", 3, 5) in got  # two evaluations per step, one on the last
    assert all(np.isfinite(row["latent_rmse"]) for row in r["rows"])
    pytest.importorskip("matplotlib")
    plot_sampler_report(r, tmp_path / "plot.png")
    assert Image.open(tmp_path / "plot.png").size[0] > 100
