"""The text-to-image pipeline: files, interop with diffusers, determinism, errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from latentdiff.pipelines import TextToImagePipeline

KW = dict(num_inference_steps=4, guidance_scale=3.0, output_type="np")


def test_generates_images_of_requested_size(tiny_pipe):
    out = tiny_pipe(["red apple", "blue heart"], num_images_per_prompt=2, seed=0, height=32, width=48, **KW)
    assert out.images.shape == (4, 32, 48, 3)
    assert [p["seed"] for p in out.parameters] == [0, 1, 2, 3]
    # (what the pixels are is checked against diffusers' post-processing in test_diffusers_parity.py)


def test_same_seed_same_image_and_per_image_seeds(tiny_pipe):
    a = tiny_pipe("red apple", seed=5, **KW).images
    b = tiny_pipe("red apple", seed=5, **KW).images
    np.testing.assert_array_equal(a, b)
    batch = tiny_pipe("red apple", num_images_per_prompt=2, seed=[5, 6], **KW).images
    assert np.abs(batch[0] - batch[1]).max() > 1e-3, "different seeds must give different images"
    # image with seed 6 is the same alone as inside a batch (noise comes from its own generator)
    alone = tiny_pipe("red apple", seed=6, **KW).images
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)


def test_pil_and_latent_outputs(tiny_pipe):
    pil = tiny_pipe("x", seed=0, num_inference_steps=2).images[0]
    assert pil.size == (32, 32) and pil.mode == "RGB"
    lat = tiny_pipe("x", seed=0, num_inference_steps=2, output_type="latent").images
    assert lat.shape == (1, 4, 16, 16)


def test_callback_sees_every_step(tiny_pipe):
    seen = []
    tiny_pipe("x", seed=0, num_inference_steps=5, callback=lambda d: seen.append(d["i"]), output_type="latent")
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_1", "dpmpp_2m"])
def test_every_sampler_runs(tiny_pipe, sampler):
    out = tiny_pipe("x", seed=0, sampler=sampler, **KW).images
    assert np.isfinite(out).all()


def test_save_load_roundtrip(tiny_pipe, tmp_path):
    a = tiny_pipe("red apple", seed=1, **KW).images
    tiny_pipe.save_pretrained(tmp_path / "copy")
    b = TextToImagePipeline.from_pretrained(tmp_path / "copy")("red apple", seed=1, **KW).images
    np.testing.assert_array_equal(a, b)
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert not list((tmp_path / "copy").rglob("*.bin")), "safetensors only"


def test_diffusers_loads_our_folder_and_gives_same_image(tiny_pipe, tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    sd.set_progress_bar_config(disable=True)
    ours = tiny_pipe(["red apple", "cat"], seed=[3, 4], sampler="ddim", num_inference_steps=6, guidance_scale=4.0,
                     output_type="np").images
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    theirs = sd(["red apple", "cat"], num_inference_steps=6, guidance_scale=4.0, generator=gens, output_type="np",
                height=32, width=32).images
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_we_load_a_folder_diffusers_saved(tiny_pipe, tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    sd.save_pretrained(tmp_path / "sd")
    ours = TextToImagePipeline.from_pretrained(tmp_path / "sd")
    a = ours("red apple", seed=2, sampler="ddim", **KW).images
    b = tiny_pipe("red apple", seed=2, sampler="ddim", **KW).images
    np.testing.assert_array_equal(a, b)


def test_fp16_save_keeps_live_model_fp32(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert tiny_pipe.unet.dtype == torch.float32
    from safetensors import safe_open

    with safe_open(str(tmp_path / "half" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    half = TextToImagePipeline.from_pretrained(tmp_path / "half")
    assert half.unet.dtype == torch.float32  # loaded back as fp32 for CPU


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="euler_ancestral"), "ddim"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(height=31), "multiples of the VAE factor 2"),
    (dict(output_type="jpg"), "output_type"),
    (dict(sampler="dpmpp_2m", eta=0.5), "eta"),
    (dict(seed=1, generator=torch.Generator()), "either seed or generator"),
])
def test_bad_arguments(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe("x", **kwargs)


def test_missing_folder_is_clear():
    with pytest.raises(FileNotFoundError, match="not found"):
        TextToImagePipeline.from_pretrained("/nonexistent/model")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        TextToImagePipeline.from_pretrained(tmp_path)


def test_pickle_weights_refused_unless_allowed(tiny_pipe, tmp_path):
    folder = tmp_path / "pickled"
    tiny_pipe.save_pretrained(folder)
    unet_dir = folder / "unet"
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(tiny_pipe.unet.state_dict(), unet_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="allow_pickle"):
        TextToImagePipeline.from_pretrained(folder)
    loaded = TextToImagePipeline.from_pretrained(folder, allow_pickle=True)
    a = loaded("x", seed=0, **KW).images
    np.testing.assert_array_equal(a, tiny_pipe("x", seed=0, **KW).images)


def test_corrupt_safetensors_is_clear(tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_pipeline_dir, folder)
    f = folder / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        TextToImagePipeline.from_pretrained(folder)


def test_save_is_atomic(tiny_pipe, tmp_path, monkeypatch):
    target = tmp_path / "model"
    tiny_pipe.save_pretrained(target)
    before = sorted(p.relative_to(target) for p in target.rglob("*"))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("latentdiff.pipelines.text_to_image.save_tokenizer", boom)
    with pytest.raises(RuntimeError):
        tiny_pipe.save_pretrained(target)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no temporary folder left behind"
    TextToImagePipeline.from_pretrained(target)


def test_cli_generate_writes_png_with_parameters_and_regenerates(tiny_pipeline_dir, tmp_path):
    from PIL import Image

    from latentdiff.cli import PNG_KEY, main

    assert main(["generate", "red apple", "--model", str(tiny_pipeline_dir), "--seed", "7", "-n", "2", "--steps", "3",
                 "--grid", "--out", str(tmp_path / "a")]) == 0
    png = tmp_path / "a" / "red_apple-8.png"
    params = json.loads(Image.open(png).text[PNG_KEY])
    assert params["seed"] == 8 and params["prompt"] == "red apple" and params["steps"] == 3
    assert (tmp_path / "a" / "grid.png").exists()
    assert main(["generate", "--from-png", str(png), "--model", str(tiny_pipeline_dir),
                 "--out", str(tmp_path / "b")]) == 0
    a = np.asarray(Image.open(png)).astype(int)
    b = np.asarray(Image.open(tmp_path / "b" / "red_apple-8.png")).astype(int)
    assert np.abs(a - b).max() <= 1


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    from latentdiff.cli import main

    assert main(["generate", "x", "--model", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err



def test_cli_unknown_sampler_lists_the_samplers(tiny_pipeline_dir, tmp_path, capsys):
    """On a real model, so that it is the sampler name that fails, not the model."""
    from latentdiff.cli import main
    from latentdiff.samplers import SAMPLERS

    assert main(["generate", "x", "--model", str(tiny_pipeline_dir), "--sampler", "nope", "--steps", "2",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and all(name in err for name in SAMPLERS), err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir()), "nothing written on an error"


def test_saved_tokenizer_is_compact_and_equivalent(tiny_pipe, tiny_pipeline_dir):
    from transformers import CLIPTokenizer

    from latentdiff.tokenizer import build_clip_tokenizer

    files = sorted(p.name for p in (tiny_pipeline_dir / "tokenizer").iterdir())
    assert files == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    loaded, ref = CLIPTokenizer.from_pretrained(tiny_pipeline_dir / "tokenizer"), build_clip_tokenizer()
    for text in ["flag: France", "woman technologist: medium-dark skin tone", "A PHOTO of a dog!!", "über 😀"]:
        assert loaded(text).input_ids == ref(text).input_ids
    assert loaded.model_max_length == 77


def test_tokenizer_matches_open_clip():
    import open_clip

    from latentdiff.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    # (open_clip also runs ftfy, which rewrites curly quotes; transformers' CLIPTokenizer, like
    # Stable Diffusion's, does not, so only ftfy-stable text is compared)
    for text in ["red apple", "woman technologist: medium skin tone", "Flag: Côte d'Ivoire", "a  b\tc"]:
        ours = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        theirs = open_clip.tokenize([text])[0].tolist()
        n = ours.index(49407) + 1
        assert ours[:n] == theirs[:n]


def test_model_sampling_defaults_are_used_and_checked(tiny_pipeline_dir, tmp_path):
    """latentdiff.json's defaults (sampler, steps, guidance, spacing) drive a call without arguments
    and survive save/load; unknown keys and unknown values are errors naming the allowed ones."""
    from latentdiff.diffusion import make_timesteps

    folder = tmp_path / "m"
    shutil.copytree(tiny_pipeline_dir, folder)
    extras = folder / "latentdiff.json"
    defaults = {"sampler": "dpmpp_2m", "num_inference_steps": 3, "guidance_scale": 2.0, "eta": 0.0,
                "timestep_spacing": "logsnr"}
    extras.write_text(json.dumps({"defaults": defaults}))
    pipe = TextToImagePipeline.from_pretrained(folder)
    seen = []
    out = pipe("red apple", seed=0, output_type="latent", callback=lambda d: seen.append(d["t"]))
    assert out.parameters[0]["timestep_spacing"] == "logsnr" and out.parameters[0]["sampler"] == "dpmpp_2m"
    assert seen == make_timesteps(3, 1000, "logsnr", alphas_cumprod=pipe.alphas_cumprod).tolist()
    explicit = pipe("red apple", seed=0, output_type="latent", timestep_spacing="logsnr", num_inference_steps=3,
                    sampler="dpmpp_2m", guidance_scale=2.0)
    assert torch.equal(out.latents, explicit.latents)
    other = pipe("red apple", seed=0, output_type="latent", timestep_spacing="trailing")
    assert not torch.equal(out.latents, other.latents)
    pipe.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "latentdiff.json").read_text())["defaults"] == {**defaults, "sigma_schedule": "default"}

    for bad, match in [({"sampler": "euler_ancestral"}, "choose one of"), ({"timestep_spacing": "karras"}, "logsnr"),
                       ({"num_steps": 4}, "Unknown config key.*num_steps"), ({"guidance_scale": "high"}, "guidance_scale")]:
        extras.write_text(json.dumps({"defaults": {**defaults, **bad}}))
        with pytest.raises(ValueError, match=match):
            TextToImagePipeline.from_pretrained(folder)


def test_atomic_writers_give_files_the_usual_permissions(tiny_pipe, tmp_path):
    """mkstemp makes 0600 files; everything we save (models, configs, images, LoRAs, cards) is meant to
    be shared, so it must end up 0666 & ~umask like a plain open() would make it."""
    import os
    import stat

    from PIL import Image

    from latentdiff import lora as L
    from latentdiff.config import atomic_write_text
    from latentdiff.images import save_png_atomic

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.yaml", "x: 1\n")
        save_png_atomic(Image.new("RGB", (4, 4)), tmp_path / "a.png")
        tiny_pipe.save_pretrained(tmp_path / "model")
        lora_file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
        L._save_safetensors_atomic({"w": torch.zeros(2)}, lora_file, {"format": "pt"})
        files = [tmp_path / "a.yaml", tmp_path / "a.png", lora_file, *(tmp_path / "model").rglob("*.json"),
                 *(tmp_path / "model").rglob("*.safetensors")]
        modes = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
        assert set(modes.values()) == {oct(0o644)}, modes
        assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    finally:
        os.umask(old)
