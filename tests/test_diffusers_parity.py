"""Our pipeline against diffusers' StableDiffusionPipeline on identical weights, for what the
other tests leave out: negative prompts, a v-prediction model, DPM-Solver++ against diffusers'
DPMSolverMultistepScheduler, and single-file checkpoints. diffusers is the reference nobody here
wrote; each check uses 6 steps and guidance 4, where samplers, prompts and seeds differ visibly,
so agreement to 1e-4 means something."""

import json
import shutil

import numpy as np
import pytest
import torch

from latentdiff.pipelines import TextToImagePipeline

STEPS, CFG = 5, 4.0  # 5 divides 1000: diffusers DDIM takes prev_t = t - 1000 // n, the next listed step only then


def diffusers_pipe(folder, scheduler=None):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if scheduler is not None:
        sd.scheduler = scheduler(sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    return sd


def both(ours, sd, prompts, seeds, ours_kw=None, steps=STEPS, **kw):
    a = ours(prompts, seed=seeds, num_inference_steps=steps, guidance_scale=CFG, output_type="np",
             **(ours_kw or {}), **kw).images
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    b = sd(prompts, num_inference_steps=steps, guidance_scale=CFG, generator=gens, output_type="np",
           height=a.shape[1], width=a.shape[2], **kw).images
    return a, b


def test_negative_prompts_match_diffusers(tiny_pipe, tiny_pipeline_dir):
    sd = diffusers_pipe(tiny_pipeline_dir)
    prompts, negatives = ["red apple", "cat"], ["blurry", "green dog"]
    a, b = both(tiny_pipe, sd, prompts, [3, 4], ours_kw={"sampler": "ddim"}, negative_prompt=negatives)
    np.testing.assert_allclose(a, b, atol=1e-4)
    plain = tiny_pipe(prompts, seed=[3, 4], sampler="ddim", num_inference_steps=STEPS, guidance_scale=CFG,
                      output_type="np").images
    assert np.abs(plain - a).max() > 1e-2, "the negative prompt must change the image"


@pytest.fixture(scope="module")
def vpred_dir(tiny_pipeline_dir, tmp_path_factory):
    """The tiny pipeline with its scheduler declared v-prediction: the same network output is then read
    as v = √ᾱ ε − √(1−ᾱ) x0, so every step differs from the ε reading."""
    folder = tmp_path_factory.mktemp("vpred") / "pipe"
    shutil.copytree(tiny_pipeline_dir, folder)
    f = folder / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "prediction_type": "v_prediction"}))
    return folder


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_v_prediction_model_matches_diffusers(vpred_dir, tiny_pipe, sampler):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    ours = TextToImagePipeline.from_pretrained(vpred_dir)
    assert ours.scheduler_config.prediction_type == "v_prediction"
    sched = (lambda c: DDIMScheduler.from_config(c, timestep_spacing="trailing")) if sampler == "ddim" else \
        (lambda c: DPMSolverMultistepScheduler.from_config(c, algorithm_type="dpmsolver++", solver_order=2,
                                                           final_sigmas_type="zero", timestep_spacing="trailing"))
    sd = diffusers_pipe(vpred_dir, sched)
    assert sd.scheduler.config.prediction_type == "v_prediction"
    a, b = both(ours, sd, ["red apple"], [5], ours_kw={"sampler": sampler, "timestep_spacing": "trailing"})
    np.testing.assert_allclose(a, b, atol=1e-4)
    eps = tiny_pipe("red apple", seed=5, sampler=sampler, timestep_spacing="trailing", num_inference_steps=STEPS,
                    guidance_scale=CFG, output_type="np").images
    assert np.abs(eps - a).max() > 1e-2, "reading the output as v must change the image"


@pytest.mark.parametrize("steps", [5, 10])
def test_dpmpp_2m_pipeline_matches_diffusers_dpm_solver(tiny_pipe, tiny_pipeline_dir, steps):
    """On trailing steps. Not 'leading'/'linspace': diffusers' DPMSolverMultistepScheduler defines them
    on n+1 points with the last dropped, unlike its DDIMScheduler ([853, 711, …, 143] vs
    [831, 665, …, 1] for one config at 6 steps); latentdiff keeps one definition, DDIM's. Not
    'logsnr' either: with use_lu_lambdas diffusers steps between the unrounded λ-uniform σ's while
    the network sees rounded timesteps (ours: ᾱ of the integer timestep), 1.4e-4 apart here."""
    from diffusers import DPMSolverMultistepScheduler

    spacing = "trailing"
    sd = diffusers_pipe(tiny_pipeline_dir, lambda c: DPMSolverMultistepScheduler.from_config(
        c, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", timestep_spacing=spacing))
    a, b = both(tiny_pipe, sd, ["red apple", "blue heart"], [1, 2], steps=steps,
                ours_kw={"sampler": "dpmpp_2m", "timestep_spacing": spacing})
    np.testing.assert_allclose(a, b, atol=1e-4)
    ddim = tiny_pipe(["red apple", "blue heart"], seed=[1, 2], sampler="ddim", timestep_spacing=spacing,
                     num_inference_steps=steps, guidance_scale=CFG, output_type="np").images
    assert np.abs(ddim - a).max() > 1e-3, "DPM-Solver++ and DDIM must differ at 6 steps"


def test_decoded_images_are_diffusers_postprocessing_of_our_latents(tiny_pipe):
    """The np/PIL images are exactly diffusers' VaeImageProcessor applied to the VAE decode of the
    returned latents (not merely clamped into [0, 1])."""
    from diffusers.image_processor import VaeImageProcessor

    out = tiny_pipe(["red apple", "cat"], seed=[0, 1], num_inference_steps=3, output_type="np")
    with torch.no_grad():
        decoded = tiny_pipe.vae.decode(out.latents / tiny_pipe.vae.config.scaling_factor).sample
    ref = VaeImageProcessor(vae_scale_factor=tiny_pipe.vae_scale_factor).postprocess(decoded, output_type="np")
    np.testing.assert_allclose(out.images, ref, atol=1e-6)
    assert out.images.std() > 1e-3
    pil = tiny_pipe(["red apple", "cat"], seed=[0, 1], num_inference_steps=3).images
    np.testing.assert_array_equal(np.stack([np.asarray(p) for p in pil]), (ref * 255).round().astype("uint8"))


def test_single_file_pickles_are_refused_before_anything_is_read(tmp_path, tiny_pipeline_dir):
    """A .ckpt (or .bin/.pt/.pth) single file runs code when unpickled: refused unless allow_pickle,
    and before diffusers opens it (the file here would run code if it were unpickled)."""
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    for suffix in (".ckpt", ".bin", ".pt", ".pth"):
        ckpt = tmp_path / f"model{suffix}"
        ckpt.write_bytes(pickle.dumps({"state_dict": Boom()}))
        with pytest.raises(ValueError, match="allow_pickle"):
            TextToImagePipeline.from_single_file(ckpt, config=tiny_pipeline_dir)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(FileNotFoundError, match="not found"):
        TextToImagePipeline.from_single_file(tmp_path / "missing.safetensors", config=tiny_pipeline_dir)
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        TextToImagePipeline.from_single_file(bad, config=tiny_pipeline_dir)
