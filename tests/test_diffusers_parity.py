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


# ------------------------------------------------------------------ single-file checkpoints


def _to_ldm(pipe) -> dict:
    """The tiny pipeline as an original (CompVis/A1111) single-file state dict: the inverse of
    diffusers' LDM converter for this architecture, written from the LDM layout (input_blocks /
    middle_block / output_blocks, first_stage_model, cond_stage_model). The test below checks it by
    the round trip: diffusers must rebuild the very same weights."""
    import re

    L = pipe.unet.config.layers_per_block
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    up_attn = {i for i, t in enumerate(pipe.unet.config.up_block_types) if "CrossAttn" in t}
    out = {}
    for k, v in pipe.unet.state_dict().items():
        n = k
        for a, b in (("conv_in.", "input_blocks.0.0."), ("time_embedding.linear_1.", "time_embed.0."),
                     ("time_embedding.linear_2.", "time_embed.2."), ("conv_norm_out.", "out.0."),
                     ("conv_out.", "out.2.")):
            if n.startswith(a):
                n = b + n[len(a):]
        m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", n)
        if m:
            kind, b, part, layer, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if kind == "down":
                i = (b + 1) * (L + 1) if part == "downsamplers" else 1 + b * (L + 1) + layer
                sub = {"resnets": "0", "attentions": "1", "downsamplers": "0"}[part]
                rest = rest.replace("conv.", "op.") if part == "downsamplers" else rest
            else:
                i = b * (L + 1) + (L if part == "upsamplers" else layer)
                sub = {"resnets": "0", "attentions": "1", "upsamplers": "2" if b in up_attn else "1"}[part]
            n = f"{'input' if kind == 'down' else 'output'}_blocks.{i}.{sub}.{rest}"
            if part == "resnets":
                head, _, tail = rest.partition(".")
                n = f"{'input' if kind == 'down' else 'output'}_blocks.{i}.0.{res.get(head, head)}.{tail}"
        m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", n)
        if m:
            part, layer, rest = m.groups()
            i = 1 if part == "attentions" else 2 * int(layer)
            if part == "resnets":
                head, _, tail = rest.partition(".")
                rest = f"{res.get(head, head)}.{tail}"
            n = f"middle_block.{i}.{rest}"
        out["model.diffusion_model." + n] = v
    nv = len(pipe.vae.config.block_out_channels)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in pipe.vae.state_dict().items():
        n = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", n)
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{nv - 1 - int(m.group(1))}.block.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{nv - 1 - int(m.group(1))}.upsample.", n)
        n = n.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        if "mid_block.attentions.0." in n:
            head, rest = n.split("mid_block.attentions.0.")
            name, _, param = rest.rpartition(".")
            n = f"{head}mid.attn_1.{attn[name]}.{param}"
            if v.ndim == 2:  # the LDM VAE's attention is 1x1 convolutions
                v = v[:, :, None, None]
        out["first_stage_model." + n] = v
    for k, v in pipe.text_encoder.state_dict().items():  # (transformers >= 5.6 dropped the text_model. level)
        out["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return {k: v.contiguous() for k, v in out.items()}


def test_single_file_checkpoint_round_trip_equals_diffusers(tiny_pipe, tiny_pipeline_dir, tmp_path):
    """An original-format .safetensors loads through from_single_file (diffusers' converter) into the
    very same weights, and gives the image of the folder it came from and of diffusers' own
    StableDiffusionPipeline.from_single_file."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    ckpt = tmp_path / "tiny.safetensors"
    save_file(_to_ldm(tiny_pipe), str(ckpt))
    ours = TextToImagePipeline.from_single_file(ckpt, config=tiny_pipeline_dir)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(tiny_pipe, name).state_dict(), getattr(ours, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a), f"{name} weights changed in the round trip"
    kw = dict(seed=[1, 2], sampler="ddim", timestep_spacing="trailing", num_inference_steps=STEPS,
              guidance_scale=CFG, output_type="np")
    a = ours(["red apple", "cat"], **kw).images
    np.testing.assert_array_equal(a, tiny_pipe(["red apple", "cat"], **kw).images)
    sd = StableDiffusionPipeline.from_single_file(str(ckpt), config=str(tiny_pipeline_dir), local_files_only=True,
                                                  safety_checker=None, requires_safety_checker=False)
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config, timestep_spacing="trailing")
    sd.set_progress_bar_config(disable=True)
    b = sd(["red apple", "cat"], num_inference_steps=STEPS, guidance_scale=CFG, output_type="np", height=32, width=32,
           generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    np.testing.assert_allclose(a, b, atol=1e-4)
