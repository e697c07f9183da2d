"""Image-to-image, inpainting, outpainting and hires fix: equal to diffusers' own pipelines on
identical weights where diffusers has them, and the properties that define them where it has not.
Compared at 5 steps and guidance 4, where a wrong start, schedule or blend shows."""

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.pipelines import TextToImagePipeline

STEPS, CFG = 5, 4.0  # 5 divides 1000: diffusers' DDIM then steps between listed timesteps


def test_image(size=32, seed=0) -> Image.Image:
    """A picture with structure (a disc on a gradient), so the VAE and the sampler have something to keep."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    a = np.stack([x, y, 1 - x], -1) * 200
    a[(x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1] = (230, 40, 40)
    a += rng.normal(0, 5, a.shape)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def left_half_mask(size=32) -> Image.Image:
    m = np.zeros((size, size), np.uint8)
    m[:, : size // 2] = 255
    return Image.fromarray(m)


def sd_pipe(cls, folder, scheduler=None):
    sd = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if scheduler is not None:
        sd.scheduler = scheduler(sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    return sd


SCHEDULERS = {
    "ddim": lambda c: __import__("diffusers").DDIMScheduler.from_config(c, timestep_spacing="trailing"),
    "dpmpp_2m": lambda c: __import__("diffusers").DPMSolverMultistepScheduler.from_config(
        c, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", timestep_spacing="trailing"),
}


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("strength", [0.3, 0.6, 0.9])
def test_img2img_matches_diffusers(tiny_pipe, tiny_pipeline_dir, sampler, strength):
    from diffusers import StableDiffusionImg2ImgPipeline

    sd = sd_pipe(StableDiffusionImg2ImgPipeline, tiny_pipeline_dir, SCHEDULERS[sampler])
    init = test_image()
    ours = tiny_pipe(["red apple", "cat"], image=init, strength=strength, seed=[3, 4], sampler=sampler,
                     timestep_spacing="trailing", num_inference_steps=10, guidance_scale=CFG, output_type="np").images
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    theirs = sd(["red apple", "cat"], image=[init, init], strength=strength, num_inference_steps=10,
                guidance_scale=CFG, generator=gens, output_type="np").images
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_img2img_strength_endpoints_and_monotonic(tiny_pipe):
    init = test_image()
    kw = dict(seed=0, sampler="ddim", timestep_spacing="trailing", num_inference_steps=10, guidance_scale=CFG,
              output_type="np")
    zero = tiny_pipe("red apple", image=init, strength=0.0, **kw).images[0]
    with torch.no_grad():  # strength 0: the input through the VAE (posterior sample of generator 0), decoded
        px = torch.from_numpy(np.asarray(init, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        z = tiny_pipe.encode_images(px, [torch.Generator().manual_seed(0)])
        roundtrip = tiny_pipe.decode_latents(z).permute(0, 2, 3, 1).numpy()[0]
    np.testing.assert_allclose(zero, roundtrip, atol=1e-5)
    one = tiny_pipe("red apple", image=init, strength=1.0, **kw).images[0]
    txt = tiny_pipe("red apple", **kw).images[0]
    np.testing.assert_array_equal(one, txt)  # strength 1 = text-to-image from pure noise
    dist = [np.abs(tiny_pipe("red apple", image=init, strength=s, **kw).images[0] - zero).mean()
            for s in (0.2, 0.5, 0.8, 1.0)]
    assert all(a < b for a, b in zip(dist, dist[1:])), dist


def test_exact_step_convention_runs_n_steps(tiny_pipe):
    seen = {}
    for conv in ("diffusers", "exact"):
        seen[conv] = []
        tiny_pipe("x", image=test_image(), strength=0.5, strength_steps=conv, num_inference_steps=6, seed=0,
                  output_type="latent", callback=lambda d, c=conv: seen[c].append(d["t"]))
    assert len(seen["diffusers"]) == 3 and len(seen["exact"]) == 6
    assert seen["exact"][0] <= 600 and seen["diffusers"][0] <= 600  # both start half-way down the schedule


@pytest.fixture(scope="module")
def inpaint_dir(tmp_path_factory, tiny_config):
    """A tiny 9-channel inpainting pipeline (diffusers' StableDiffusionInpaintPipeline layout)."""
    import dataclasses

    from latentdiff.models import build_components

    c = build_components(tiny_config, 0)
    unet_cfg = dict(c["unet"].config)
    unet_cfg["in_channels"] = 9
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config(unet_cfg)
    pipe = TextToImagePipeline(unet, c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler_config"],
                               dataclasses.replace(c["defaults"]))
    path = tmp_path_factory.mktemp("inpaint") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["4ch", "9ch"])
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpainting_matches_diffusers(tiny_pipe, tiny_pipeline_dir, inpaint_dir, kind, strength):
    from diffusers import StableDiffusionInpaintPipeline

    folder = tiny_pipeline_dir if kind == "4ch" else inpaint_dir
    ours = tiny_pipe if kind == "4ch" else TextToImagePipeline.from_pretrained(inpaint_dir)
    sd = sd_pipe(StableDiffusionInpaintPipeline, folder, SCHEDULERS["ddim"])
    init, mask = test_image(), left_half_mask()
    a = ours("red apple", image=init, mask_image=mask, strength=strength, seed=5, sampler="ddim",
             timestep_spacing="trailing", num_inference_steps=STEPS, guidance_scale=CFG, output_type="np").images
    b = sd("red apple", image=init, mask_image=mask, strength=strength, num_inference_steps=STEPS,
           guidance_scale=CFG, generator=torch.Generator().manual_seed(5), output_type="np",
           height=32, width=32).images
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_unmasked_pixels_kept(tiny_pipe):
    init, mask = test_image(), left_half_mask()
    kw = dict(seed=1, num_inference_steps=STEPS, guidance_scale=CFG, output_type="np")
    src = np.asarray(init, np.float32) / 255
    kept = tiny_pipe("red apple", image=init, mask_image=mask, keep_unmasked=True, **kw).images[0]
    np.testing.assert_allclose(kept[:, 16:], src[:, 16:], atol=1e-6)  # exactly the input (pasted back)
    assert np.abs(kept[:, :16] - src[:, :16]).mean() > 0.02  # and the masked half was repainted
    plain = tiny_pipe("red apple", image=init, mask_image=mask, **kw).images[0]
    vae = tiny_pipe("red apple", image=init, strength=0.0, **kw).images[0]  # the input through the VAE
    # without paste-back the known half is the VAE's version of the input (latent blending), up to
    # the decoder's receptive field reaching across the mask edge
    assert np.abs(plain[:, 20:] - vae[:, 20:]).max() < np.abs(plain[:, :12] - vae[:, :12]).max()
    blurred = tiny_pipe("red apple", image=init, mask_image=mask, keep_unmasked=True, mask_blur=3, **kw).images[0]
    np.testing.assert_allclose(blurred[:, 28:], src[:, 28:], atol=2e-3)  # far from the edge: still the input
    assert np.abs(blurred[:, 14:18] - kept[:, 14:18]).max() > 1e-3  # the seam is softened


def test_only_masked_works_on_the_box_and_pastes_back(tiny_pipe):
    init = test_image(48)
    m = np.zeros((48, 48), np.uint8)
    m[30:40, 30:40] = 255
    out = tiny_pipe("red apple", image=init, mask_image=Image.fromarray(m), only_masked=True, only_masked_padding=4,
                    height=32, width=32, seed=0, num_inference_steps=STEPS, output_type="np").images[0]
    src = np.asarray(init, np.float32) / 255
    assert out.shape == (48, 48, 3)
    np.testing.assert_allclose(out[:20, :20], src[:20, :20], atol=1e-6)
    assert np.abs(out[30:40, 30:40] - src[30:40, 30:40]).mean() > 0.02


def test_outpaint_extends_the_canvas(tiny_pipe):
    init = test_image(32)
    out = tiny_pipe("red apple", image=init, outpaint=(16, 0, 0, 16), keep_unmasked=True, seed=0,
                    num_inference_steps=STEPS, output_type="np").images[0]
    assert out.shape == (48, 48, 3)
    np.testing.assert_allclose(out[:32, 16:], np.asarray(init, np.float32) / 255, atol=1e-6)


def test_hires_fix_is_txt2img_then_img2img_of_the_upscaled_latents(tiny_pipe):
    import torch.nn.functional as F

    kw = dict(seed=2, sampler="ddim", timestep_spacing="trailing", num_inference_steps=STEPS, guidance_scale=CFG)
    hires = tiny_pipe("red apple", hires_scale=2.0, hires_strength=0.6, output_type="np", **kw)
    assert hires.images.shape == (1, 64, 64, 3) and hires.parameters[0]["hires_scale"] == 2.0
    # by hand: the base latents, upscaled, noised to the first kept timestep with the generator's next draw
    g = torch.Generator().manual_seed(2)
    base = tiny_pipe("red apple", generator=[g], output_type="latent",
                     **{k: v for k, v in kw.items() if k != "seed"}).latents
    big = F.interpolate(base, scale_factor=2, mode="bilinear")
    ts = tiny_pipe._timesteps(STEPS, "trailing", 0.6, "diffusers")
    from latentdiff.diffusion import q_sample, randn
    from latentdiff.samplers import sample_ddim

    x = q_sample(big, int(ts[0]), randn(big.shape, generator=[g]), tiny_pipe.alphas_cumprod)
    den = tiny_pipe._denoiser(tiny_pipe.encode_prompt(["red apple"]), tiny_pipe.encode_prompt([""]), CFG, 0.0,
                              None, None, 0.0, 1, big.shape, None)
    fa = 1.0 if tiny_pipe.scheduler_config.set_alpha_to_one else float(tiny_pipe.alphas_cumprod[0])
    ref = sample_ddim(den, x, ts, final_alpha_cumprod=fa)
    torch.testing.assert_close(hires.latents, ref)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(strength=1.5), ValueError, r"strength must be a number in \[0, 1\]"),
    (dict(strength=-0.1), ValueError, r"strength must be a number in \[0, 1\]"),
    (dict(mask_image=Image.new("L", (16, 16), 255)), ValueError, "mask_image is 16x16 px but image is 32x32"),
    (dict(image=object()), TypeError, "image must be a PIL image"),
    (dict(image="/nonexistent/x.png"), FileNotFoundError, "image: /nonexistent/x.png not found"),
    (dict(strength=0.05), ValueError, "leaves no step to run"),
    (dict(strength_steps="comfy"), ValueError, "strength_steps must be one of diffusers, exact"),
    (dict(outpaint=(1, 2)), ValueError, "outpaint must be"),
    (dict(keep_unmasked=True), ValueError, "need mask_image"),
    (dict(hires_scale=0.5), ValueError, "hires_scale must be"),
    (dict(hires_scale=2, hires_upscaler="esrgan"), ValueError, "hires_upscaler must be one of"),
])
def test_bad_image_inputs_are_clear_errors(tiny_pipe, kwargs, exc, match):
    call = {"image": test_image(), "num_inference_steps": 10, **kwargs}
    with pytest.raises(exc, match=match):
        tiny_pipe("x", **call)


def test_not_an_image_file_and_mask_edge_cases(tiny_pipe, tmp_path, caplog):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="notes.png is not a readable image"):
        tiny_pipe("x", image=bad)
    with pytest.raises(ValueError, match="need image="):
        tiny_pipe("x", mask_image=left_half_mask())
    import logging

    with caplog.at_level(logging.WARNING, logger="latentdiff"):
        tiny_pipe("x", image=test_image(), mask_image=Image.new("L", (32, 32), 0), num_inference_steps=2,
                  output_type="latent")
    assert "all black" in caplog.text


def test_nine_channel_model_needs_a_mask(inpaint_dir):
    pipe = TextToImagePipeline.from_pretrained(inpaint_dir)
    with pytest.raises(ValueError, match="inpainting U-Net.*mask_image"):
        pipe("x", num_inference_steps=2)


def test_fp16_vae_nan_is_retried_in_fp32(tiny_pipe, monkeypatch, caplog):
    import logging

    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = tiny_pipe.decode_latents(latents)
    tiny_pipe.vae.to(torch.float16)
    cls = type(tiny_pipe.vae)
    real_decode = cls.decode

    def overflowing(self, z, *a, **k):  # what an fp16 SD VAE does on some latents
        out = real_decode(self, z, *a, **k)
        if self.dtype == torch.float16:
            out.sample[:] = float("nan")
        return out

    monkeypatch.setattr(cls, "decode", overflowing)
    with caplog.at_level(logging.WARNING, logger="latentdiff"):
        img = tiny_pipe.decode_latents(latents)
    assert "decoding again in float32" in caplog.text
    assert torch.isfinite(img).all()
    torch.testing.assert_close(img, ref, atol=2e-3, rtol=0)


def test_vae_tiling_decodes_large_images(tiny_pipe):
    latents = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(0))
    plain = tiny_pipe.decode_latents(latents)
    vae = tiny_pipe.vae
    vae.tile_sample_min_size, vae.tile_latent_min_size = 32, 16
    tiny_pipe.enable_vae_tiling()
    try:
        tiled = tiny_pipe.decode_latents(latents)
    finally:
        tiny_pipe.enable_vae_tiling(False)
    assert tiled.shape == plain.shape == (1, 3, 96, 96)
    assert (tiled - plain).abs().mean() < 0.05  # tiles blended: close to the whole-image decode
    assert not torch.equal(tiled, plain)  # and it did tile


@pytest.mark.parametrize("schedule", ["karras", "default"])
def test_img2img_with_euler_matches_diffusers(tiny_pipe, tiny_pipeline_dir, schedule):
    """On sigma schedules the start is q(x | z) at the first kept σ (ᾱ = 1/(1+σ²)): diffusers'
    EulerDiscreteScheduler img2img on the same weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    karras = schedule == "karras"
    # Karras on linspace steps: diffusers takes σ_min, σ_max from its timestep spacing, k-diffusion/A1111
    # (and we) from the table's ends; they coincide for linspace (docs/samplers.md)
    spacing = "linspace" if karras else "trailing"
    sd = sd_pipe(StableDiffusionImg2ImgPipeline, tiny_pipeline_dir, lambda c: EulerDiscreteScheduler.from_config(
        c, timestep_spacing=spacing, use_karras_sigmas=karras))
    init = test_image()
    ours = tiny_pipe("red apple", image=init, strength=0.6, seed=3, sampler="euler",
                     sigma_schedule=schedule, timestep_spacing=spacing, num_inference_steps=10,
                     guidance_scale=CFG, output_type="np").images
    theirs = sd("red apple", image=init, strength=0.6, num_inference_steps=10, guidance_scale=CFG,
                generator=torch.Generator().manual_seed(3), output_type="np").images
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_every_sampler_runs_img2img_and_inpainting(tiny_pipe):
    from latentdiff.samplers import SAMPLERS

    init, mask = test_image(), left_half_mask()
    src = np.asarray(init, np.float32) / 255
    for name in SAMPLERS:  # sigma schedules for all; the timestep samplers also take them
        out = tiny_pipe("red apple", image=init, mask_image=mask, keep_unmasked=True, strength=0.7, seed=0,
                        sampler=name, sigma_schedule="karras", num_inference_steps=3, guidance_scale=1.0,
                        output_type="np").images[0]
        for schedule in ["karras"]:
            assert np.isfinite(out).all(), (name, schedule)
            np.testing.assert_allclose(out[:, 16:], src[:, 16:], atol=1e-6, err_msg=f"{name} {schedule}")
