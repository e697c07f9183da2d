"""Bad input, the campaign of issue 12: nothing lost, nothing silent, one line per error.

Each test is one class of bad or unlucky input (docs/bad_input.md lists them with what the user
sees). Error tests match the message, not only the exit code; data-loss tests check the bytes
that must survive.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.cli import PNG_KEY, main
from latentdiff.errors import MemoryLimitError, NonFiniteError, OutputExistsError
from latentdiff.pipelines import TextToImagePipeline

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2"]


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line the CLI printed (progress bars aside), never a traceback."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------- data loss


def test_save_pretrained_refuses_a_folder_with_someone_elses_files(tiny_pipe, tmp_path, monkeypatch):
    target = tmp_path / "p"
    target.mkdir()
    (target / "thesis.txt").write_text("four years of work")
    monkeypatch.setattr("latentdiff.pipelines.text_to_image.save_tokenizer",
                        lambda *a: pytest.fail("wrote the model before refusing the folder"))
    with pytest.raises(OutputExistsError, match=r"p already holds files latentdiff did not write \(thesis.txt\)"):
        tiny_pipe.save_pretrained(target)
    monkeypatch.undo()
    from latentdiff.io import atomic_dir

    with pytest.raises(OutputExistsError, match="thesis.txt"):  # a writer that does not say what it writes
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"weights")
    assert (target / "thesis.txt").read_text() == "four years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"], "no temporary folder left behind"
    assert sorted(p.name for p in target.iterdir()) == ["thesis.txt"]


def test_save_pretrained_replaces_its_own_folder_and_keeps_the_model_card(tiny_pipe, tmp_path):
    target = tmp_path / "p"
    tiny_pipe.save_pretrained(target)
    (target / "README.md").write_text("my notes about this model")
    (target / "training_summary.json").write_text("{}")  # written by our trainers beside the pipeline
    tiny_pipe.save_pretrained(target)
    assert (target / "README.md").read_text() == "my notes about this model"
    assert not (target / "training_summary.json").exists()
    TextToImagePipeline.from_pretrained(target)


def test_save_pretrained_onto_a_file_is_refused(tiny_pipe, tmp_path):
    f = tmp_path / "model"
    f.write_text("not a folder")
    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        tiny_pipe.save_pretrained(f)
    assert f.read_text() == "not a folder"


def test_generate_never_overwrites_an_earlier_image(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "o"
    rc, first, _ = run(capsys, "generate", "red apple", "--model", tiny_pipeline_dir, "--seed", 0, "--grid",
                       "--out", out, *FAST)
    assert rc == 0
    apple, grid = [Path(p) for p in first.split()]
    before = apple.read_bytes(), grid.read_bytes()
    rc, second, _ = run(capsys, "generate", "Red Apple!", "--model", tiny_pipeline_dir, "--seed", 0, "--grid",
                        "--out", out, "--guidance", 2, *FAST)
    assert rc == 0
    apple2, grid2 = [Path(p) for p in second.split()]
    assert (apple.name, grid.name) == ("red_apple-0.png", "grid.png")
    assert (apple2.name, grid2.name) == ("red_apple-0-1.png", "grid-1.png"), "every file printed where it went"
    assert (apple.read_bytes(), grid.read_bytes()) == before
    assert json.loads(Image.open(apple2).text[PNG_KEY])["prompt"] == "Red Apple!"


def test_exclusive_png_save_refuses_a_taken_name(tmp_path):
    from latentdiff.images import save_png_atomic

    p = tmp_path / "a.png"
    p.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        save_png_atomic(Image.new("RGB", (2, 2)), p, exclusive=True)
    assert p.read_bytes() == b"precious"
    assert [x.name for x in tmp_path.iterdir()] == ["a.png"]


# ---------------------------------------------------------------------------------------------- silent wrong results


@pytest.mark.parametrize("flag, value, match", [
    ("--guidance", "inf", "guidance_scale must be a finite number, got inf"),
    ("--guidance", "nan", "guidance_scale must be a finite number, got nan"),
    ("--eta", "nan", "eta must be a finite number, got nan"),
    ("--eta", "2", r"eta must be in \[0.0, 1.0\], got 2.0"),
    ("--guidance-rescale", "1.5", r"guidance_rescale must be in \[0.0, 1.0\]"),
    ("--steps", "5000", r"num_inference_steps must be an integer in \[1, 1000\], got 5000"),
    ("--seed", "-1", r"seed must be an integer in \[0, 9223372036854775807\], got -1"),
])
def test_non_finite_or_out_of_range_numbers_are_refused(tiny_pipeline_dir, tmp_path, capsys, flag, value, match):
    extra = ["--sampler", "ddim"] if flag == "--eta" else []
    rc, out, err = run(capsys, "generate", "x", "--model", tiny_pipeline_dir, "--out", tmp_path, *FAST, flag, value,
                       *extra)
    assert rc == 2 and out == ""
    assert re.search(match, one_error_line(err)), err
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_nan_latents_are_refused(tiny_pipe):
    lat = torch.full((1, 4, 16, 16), float("nan"))
    with pytest.raises(NonFiniteError, match="latents contain NaN or Inf"):
        tiny_pipe("x", latents=lat, num_inference_steps=2)


def test_corrupted_weights_stop_with_the_component_named(tiny_pipeline_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(tiny_pipeline_dir, folder)
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    sd["conv_in.weight"][0, 0, 0, 0] = float("nan")  # one flipped weight, as from a bad copy
    save_file(sd, str(f))
    rc, out, err = run(capsys, "generate", "x", "--model", folder, "--out", tmp_path / "o", *FAST)
    assert rc == 2
    assert "the unet weights do (conv_in.weight)" in one_error_line(err) and "corrupt" in err
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == [], "no black PNG"


def test_a_vae_that_overflows_is_an_error_not_a_white_image(tiny_pipe):
    with torch.no_grad():
        tiny_pipe.vae.decoder.conv_out.bias.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="vae weights do"):
        tiny_pipe("x", num_inference_steps=2, seed=0)


def test_from_png_explicit_options_win(tiny_pipeline_dir, tmp_path, capsys):
    rc, out, _ = run(capsys, "generate", "red apple", "--model", tiny_pipeline_dir, "--seed", 3, "--out",
                     tmp_path / "a", "--steps", 2)
    png = Path(out.split()[0])
    rc, out, _ = run(capsys, "generate", "blue heart", "--from-png", png, "--steps", 3, "--out", tmp_path / "b")
    assert rc == 0
    params = json.loads(Image.open(out.split()[0]).text[PNG_KEY])
    assert params["prompt"] == "blue heart" and params["steps"] == 3, "explicit options win"
    assert params["seed"] == 3 and params["model"] == str(tiny_pipeline_dir), "the PNG fills the rest"


@pytest.mark.parametrize("argv, match", [
    (["--class", "Food"], "--class and --classifier-scale need --classifier DIR"),
    (["--classifier-scale", "3"], "--class and --classifier-scale need --classifier DIR"),
    (["--guidance", "1", "--negative-prompt", "blurry"], "negative_prompt has no effect with guidance_scale=1"),
    (["--guidance", "1", "--guidance-rescale", "0.7"], "guidance_rescale=0.7 has no effect with guidance_scale=1"),
    (["--revision", "v2"], "--revision v2 applies to Hub repo ids only"),
])
def test_options_that_would_do_nothing_are_errors(tiny_pipeline_dir, tmp_path, capsys, argv, match):
    rc, _, err = run(capsys, "generate", "x", "--model", tiny_pipeline_dir, "--out", tmp_path, *argv, *FAST)
    assert rc == 2 and match in one_error_line(err)


def test_api_class_label_without_classifier(tiny_pipe):
    with pytest.raises(ValueError, match="class_label='Food' needs a classifier"):
        tiny_pipe("x", class_label="Food", num_inference_steps=2)


# ---------------------------------------------------------------------------------------------- resource limits


def test_image_too_large_for_memory_is_refused_before_allocating(tiny_pipe, monkeypatch, capsys, tiny_pipeline_dir,
                                                                 tmp_path):
    monkeypatch.setattr("latentdiff.pipelines.text_to_image.available_memory", lambda device: 2**30)
    with pytest.raises(MemoryLimitError, match=r"1 image\(s\) of 8192×8192 need about .* GiB on cpu .* only 1.0 GiB "
                                               r"is available.*--vae-tiling.*--no-memory-check"):
        tiny_pipe("x", height=8192, width=8192, num_inference_steps=2)
    rc, _, err = run(capsys, "generate", "x", "--model", tiny_pipeline_dir, "--out", tmp_path, "--height", 8192,
                     "--width", 8192, *FAST)
    assert rc == 2 and "need about" in one_error_line(err)


def test_memory_estimate_grows_with_size_and_tiling_bounds_the_decode(tiny_pipe):
    small, large = tiny_pipe.estimate_memory(1, 64, 64), tiny_pipe.estimate_memory(1, 1024, 1024)
    assert large["unet"] >= 200 * small["unet"] and large["vae_decode"] >= 200 * small["vae_decode"]
    tiny_pipe.vae.enable_tiling()
    try:
        tiled = tiny_pipe.estimate_memory(1, 4096, 4096)["vae_decode"]
        assert tiled == tiny_pipe.estimate_memory(1, tiny_pipe.vae.tile_sample_min_size,
                                                  tiny_pipe.vae.tile_sample_min_size)["vae_decode"]
    finally:
        tiny_pipe.vae.disable_tiling()


def test_memory_check_counts_every_part_of_a_composable_prompt(tiny_pipe, monkeypatch):
    # "a AND b AND c" runs the U-Net on 3 parts + the negative per image, twice CFG's batch
    per_copy = {k: v // 2 for k, v in tiny_pipe.estimate_memory(1, 256, 256, guided=True).items()}
    assert tiny_pipe.estimate_memory(1, 256, 256, inputs_per_image=4)["unet"] > tiny_pipe.estimate_memory(1, 256, 256)["unet"]
    have = 3 * per_copy["unet"]  # room for CFG's 2 inputs, not for 4
    monkeypatch.setattr("latentdiff.pipelines.text_to_image.available_memory", lambda device: max(
        have, tiny_pipe.estimate_memory(1, 256, 256)["vae_decode"]))
    tiny_pipe.check_memory(1, 256, 256, inputs_per_image=2)
    with pytest.raises(MemoryLimitError):
        tiny_pipe.check_memory(1, 256, 256, inputs_per_image=4)
    kw = dict(height=256, width=256, num_inference_steps=1, output_type="latent")
    assert tiny_pipe("a", guidance_scale=5.0, **kw).latents.shape[0] == 1
    with pytest.raises(MemoryLimitError):
        tiny_pipe("a AND b AND c", guidance_scale=5.0, **kw)
    assert tiny_pipe._unet_inputs_per_image("a AND b AND c :0.5", 1.0) == 4
    assert tiny_pipe._unet_inputs_per_image(["x", "a AND b"], 7.0) == 3
    assert tiny_pipe._unet_inputs_per_image("keycap: 9", 7.0) == 2
    assert tiny_pipe._unet_inputs_per_image("x", 1.0) == 1
    assert tiny_pipe._unet_inputs_per_image(None, 7.0) == 2  # prompt_embeds


def test_memory_check_override(tiny_pipe, monkeypatch):
    monkeypatch.setattr("latentdiff.pipelines.text_to_image.available_memory", lambda device: 1)
    with pytest.raises(MemoryLimitError):
        tiny_pipe("x", num_inference_steps=1, output_type="latent")
    assert tiny_pipe("x", num_inference_steps=1, output_type="latent", check_memory=False).latents.shape[0] == 1


# ---------------------------------------------------------------------------------------------- one-line errors


def test_out_that_is_a_file_fails_before_loading_the_model(tmp_path, capsys, monkeypatch):
    f = tmp_path / "taken"
    f.write_text("x")

    def no_load(*a, **k):
        raise AssertionError("the model must not load before --out is checked")

    monkeypatch.setattr(TextToImagePipeline, "from_pretrained", no_load)
    rc, _, err = run(capsys, "generate", "x", "--out", f)
    assert rc == 2 and f"--out {f} is a file, not a folder" in one_error_line(err)
    rc, _, err = run(capsys, "generate", "x", "--out", f / "sub")
    assert rc == 2 and "a part of this path is a file" in one_error_line(err)


def test_out_that_is_read_only_fails_before_sampling(tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*a, dir=None, **k):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # (tests run as root, where chmod does not bite)
    monkeypatch.setattr(TextToImagePipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    rc, _, err = run(capsys, "generate", "x", "--out", tmp_path / "ro")
    assert rc == 2 and "is not writable (Permission denied)" in one_error_line(err)


@pytest.mark.parametrize("content, match", [
    (b"", "is not a readable PNG"),
    (b"GIF89a not a png at all", "is not a readable PNG"),
    ("truncated", "is not a readable PNG"),
    ("bad-json", "parameters are not valid JSON"),
    ("list", "parameters are a list, not an object"),
    ("partial", "parameters lack seed, sampler"),
    ("no-chunk", "carries no 'latentdiff' parameters"),
])
def test_from_png_bad_files(tmp_path, capsys, content, match):
    from PIL.PngImagePlugin import PngInfo

    png = tmp_path / "in.png"
    im = Image.new("RGB", (8, 8), "red")
    texts = {"bad-json": "{not json", "list": "[1, 2]", "partial": json.dumps({"prompt": "x"})}
    if isinstance(content, bytes):
        png.write_bytes(content)
    elif content == "truncated":
        info = PngInfo()
        info.add_text(PNG_KEY, json.dumps({"prompt": "x"}))
        im.save(png, pnginfo=info)
        png.write_bytes(png.read_bytes()[:60])
    else:
        info = PngInfo()
        if content in texts:
            info.add_text(PNG_KEY, texts[content])
        im.save(png, pnginfo=info)
    rc, _, err = run(capsys, "generate", "--from-png", png, "--out", tmp_path / "o")
    assert rc == 2 and match in one_error_line(err) and str(png) in err


@pytest.mark.parametrize("device, match", [
    ("gpu", "device 'gpu' is not a device name; use cpu, cuda, cuda:N or mps"),
    ("cuda:99", "cuda:99"),
    ("meta", "device 'meta' is not supported; use cpu"),
])
def test_unusable_device(tiny_pipeline_dir, tmp_path, capsys, device, match):
    rc, _, err = run(capsys, "generate", "x", "--model", tiny_pipeline_dir, "--out", tmp_path, "--device", device)
    assert rc == 2 and match in one_error_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tiny_pipeline_dir, tmp_path, capsys):
    rc, _, err = run(capsys, "generate", "x", "--model", tiny_pipeline_dir, "--out", tmp_path, "--device", "cuda")
    assert rc == 2 and "no CUDA GPU is available on this machine" in one_error_line(err)


@pytest.mark.parametrize("file", ["unet/config.json", "scheduler/scheduler_config.json", "latentdiff.json",
                                  "text_encoder/config.json"])
def test_broken_json_in_a_model_folder(tiny_pipeline_dir, tmp_path, capsys, file):
    folder = tmp_path / "m"
    shutil.copytree(tiny_pipeline_dir, folder)
    (folder / file).write_text('{"truncated": ')
    rc, _, err = run(capsys, "generate", "x", "--model", folder, "--out", tmp_path / "o", *FAST)
    line = one_error_line(err)
    assert rc == 2 and str(folder / Path(file).parent) in line and "JSON" in line.upper(), line
    assert "re-download or re-save it" in line


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(prompt=None), TypeError, "prompt must be a string or a list of strings, got NoneType"),
    (dict(prompt=123), TypeError, "prompt must be a string or a list of strings, got int 123"),
    (dict(prompt=["a", 1]), TypeError, r"prompt\[1\] must be a string, got int 1"),
    (dict(prompt=[]), ValueError, "prompt is an empty list"),
    (dict(prompt="x", negative_prompt=5), TypeError, "negative_prompt must be a string"),
    (dict(prompt="x", num_inference_steps=2.5), TypeError, "num_inference_steps must be an integer, got float"),
    (dict(prompt="x", num_inference_steps=True), TypeError, "num_inference_steps must be an integer, got bool"),
    (dict(prompt="x", guidance_scale="7"), TypeError, "guidance_scale must be a number, got str"),
    (dict(prompt="x", height=32.0), TypeError, "height must be an integer, got float"),
    (dict(prompt="x", seed="1"), TypeError, "seed must be an integer, got str"),
    (dict(prompt="x", seed=[1, None], num_images_per_prompt=2), TypeError, r"seed\[1\] must be an integer"),
    (dict(prompt="x", latents=np.zeros((1, 4, 16, 16))), TypeError, "latents must be a torch.Tensor"),
    (dict(prompt="x", timestep_spacing="karras"), ValueError, "Unknown timestep_spacing 'karras'"),
    (dict(prompt="x", classifier_scale=math.inf), ValueError, "classifier_scale must be a finite number"),
])
def test_api_wrong_types_name_the_argument(tiny_pipe, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tiny_pipe(**{"num_inference_steps": 2, **kwargs})


def test_lora_scale_must_be_finite(tiny_pipeline_dir, tmp_path, capsys):
    rc, _, err = run(capsys, "generate", "x", "--model", tiny_pipeline_dir, "--out", tmp_path,
                     "--lora", "some.safetensors:nan")
    assert rc == 2 and "--lora some.safetensors:nan: the scale must be a finite number" in one_error_line(err)


def test_ctrl_c_is_one_line_not_a_traceback(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr("latentdiff.cli.generate", interrupted)
    rc, _, err = run(capsys, "generate", "x")
    assert rc == 130 and err.strip() == "interrupted"


def test_real_bugs_keep_their_traceback(monkeypatch):
    def bug(argv):
        raise AttributeError("'NoneType' object has no attribute 'x'")

    monkeypatch.setattr("latentdiff.cli.generate", bug)
    with pytest.raises(AttributeError):
        main(["generate", "x"])


def test_full_disk_while_saving_a_png_is_one_line(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    import errno

    def full(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full)
    rc, _, err = run(capsys, "generate", "x", "--model", tiny_pipeline_dir, "--out", tmp_path / "o", *FAST)
    assert rc == 2 and "no space left on the device: free some space" in one_error_line(err)
    assert list((tmp_path / "o").iterdir()) == [], "the partial temporary file is removed"


# ---------------------------------------------------------------------------------------------- training


TINY_UNET = ROOT / "configs" / "tiny_unet.yaml"
TRAIN_BASE = {"data.max_samples": 16, "data.validation_split": "", "optim.batch_size": 4, "validation_steps": 0,
              "log_every": 1, "optim.max_train_steps": 2, "checkpointing_steps": 2, "device": "cpu", "cpu_threads": 1}


def unet_cfg(out, **overrides):
    from latentdiff.config import load_config
    from latentdiff.train.unet import UNetTrainConfig

    return load_config(TINY_UNET, UNetTrainConfig, {"output_dir": str(out), **TRAIN_BASE, **overrides})


def train_args(out, *extra) -> list:
    args = ["train", "unet", "--config", TINY_UNET, "--output-dir", out]
    for k, v in TRAIN_BASE.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


@pytest.fixture
def one_run(tmp_path):
    """A finished 2-step tiny U-Net run (checkpoint-2 and final/)."""
    from latentdiff.train.unet import train

    out = tmp_path / "run"
    train(unet_cfg(out, cache_dir=str(tmp_path / "cache")))
    return out


def test_fresh_run_into_another_runs_output_dir_is_refused(one_run, capsys):
    before = sorted(p.name for p in (one_run / "checkpoints").iterdir())
    state = (one_run / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_bytes()
    rc, _, err = run(capsys, *train_args(one_run))
    line = one_error_line(err)
    assert rc == 2 and "already holds a training run" in line and "checkpoint-2" in line
    assert "--resume latest" in line and "--overwrite-output-dir" in line
    assert sorted(p.name for p in (one_run / "checkpoints").iterdir()) == before
    assert (one_run / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_bytes() == state
    # continuing it is fine, and so is starting afresh when asked explicitly
    assert run(capsys, *train_args(one_run, "--resume", "latest", "--set", "optim.max_train_steps=4"))[0] == 0
    assert [p.name for p in sorted((one_run / "checkpoints").iterdir())] == ["checkpoint-2", "checkpoint-4"]
    assert run(capsys, *train_args(one_run, "--overwrite-output-dir"))[0] == 0
    assert [p.name for p in (one_run / "checkpoints").iterdir()] == ["checkpoint-2"]
    assert json.loads((one_run / "run.json").read_text())["trainer"] == "unet"


def test_resume_into_another_trainers_output_dir_is_refused(one_run, capsys):
    (one_run / "run.json").write_text(json.dumps({"trainer": "vae"}))
    rc, _, err = run(capsys, *train_args(one_run, "--resume", "latest"))
    assert rc == 2 and "holds a `latentdiff train vae` run, not a unet run" in one_error_line(err)


@pytest.mark.parametrize("value, match", [("''", "output_dir is empty, which would write into the current folder")])
def test_empty_output_dir_is_not_the_current_folder(tmp_path, capsys, monkeypatch, value, match):
    monkeypatch.chdir(tmp_path)
    args = [a for a in train_args("x") if a not in ("--output-dir", "x")] + [
        "--set", f"output_dir={value}", "--set", f"model={ROOT / 'configs' / 'tiny.yaml'}"]
    rc, _, err = run(capsys, *args)
    assert rc == 2 and match in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_output_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    rc, _, err = run(capsys, *train_args(f))
    assert rc == 2 and f"output_dir {f} is a file, not a folder" in one_error_line(err)


def test_diverging_training_stops_before_a_nan_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run(capsys, *train_args(out, "--set", "optim.learning_rate=1e30", "--set", "optim.lr_warmup_steps=0",
                                         "--set", "optim.max_grad_norm=0", "--set", "optim.max_train_steps=6",
                                         "--set", "checkpointing_steps=1"))
    line = one_error_line(err)
    assert rc == 2 and re.search(r"training diverged at step \d: the (training loss is nan|unet weights hold NaN)", line)
    assert re.search(r"(no checkpoint was saved yet|the last good checkpoint is \S+checkpoint-\d)", line)
    assert "lower optim.learning_rate" in line
    from safetensors.torch import load_file

    for ckpt in (out / "checkpoints").glob("checkpoint-*"):  # any checkpoint written before it diverged is finite
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())
    assert not (out / "final").exists()


def test_a_run_that_diverges_after_a_checkpoint_keeps_it(one_run, monkeypatch):
    import latentdiff.train.unet as U

    calls, real = [], U.diffusion_loss

    def diverging(*a, **k):  # finite for the resumed step 3, NaN from step 4 on: as a blow-up looks
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) > 1 else loss

    monkeypatch.setattr(U, "diffusion_loss", diverging)
    good = (one_run / "checkpoints" / "checkpoint-2" / "model.safetensors").read_bytes()
    final = (one_run / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(NonFiniteError, match=r"training diverged at step 4: the training loss is nan; nothing was "
                                             r"saved for this step and the last good checkpoint is .*checkpoint-3"):
        U.train(unet_cfg(one_run, **{"optim.max_train_steps": 6, "checkpointing_steps": 1}), resume="latest")
    assert sorted(p.name for p in (one_run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert (one_run / "checkpoints" / "checkpoint-2" / "model.safetensors").read_bytes() == good
    assert (one_run / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == final


def test_resume_with_a_learning_rate_it_would_ignore(one_run, capsys):
    rc, _, err = run(capsys, *train_args(one_run, "--resume", "latest", "--set", "optim.learning_rate=3e-4"))
    line = one_error_line(err)
    assert rc == 2 and "optim.learning_rate 0.001 -> 0.0003 would be ignored" in line


@pytest.mark.parametrize("value", ["inf", ".inf", "nan", ".nan"])
def test_non_finite_learning_rate_is_refused_before_training(tmp_path, capsys, value):
    rc, _, err = run(capsys, *train_args(tmp_path / "o", "--set", f"optim.learning_rate={value}"))
    assert rc == 2 and "optim.learning_rate: expected a finite number" in one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_nan_weights_are_never_saved_as_a_pipeline(tiny_pipe, tmp_path):
    with torch.no_grad():
        tiny_pipe.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"the unet weights hold NaN/Inf \(conv_in.weight\)"):
        tiny_pipe.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("written, expected", [("3e-4", 3e-4), ("1E-5", 1e-5), ("2", 2.0), (".5", 0.5)])
def test_numbers_as_users_write_them(tmp_path, written, expected):
    cfg = unet_cfg(tmp_path, **{"optim.learning_rate": __import__("yaml").safe_load(written)})
    assert cfg.optim.learning_rate == expected and isinstance(cfg.optim.learning_rate, float)


def test_readme_set_learning_rate_example_runs(tmp_path, capsys):
    """README, --help and our own error message all say `--set optim.learning_rate=3e-4`."""
    from latentdiff.train.common import build_parser, load_train_config
    from latentdiff.train.unet import UNetTrainConfig

    args = build_parser("x", "", "").parse_args(["--config", str(TINY_UNET), "--set", "optim.learning_rate=3e-4"])
    assert load_train_config(args, UNetTrainConfig).optim.learning_rate == 3e-4
    assert "--set optim.learning_rate=3e-4" in build_parser("x", "", "").format_help()


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_UNET.read_text().replace("optim:\n", "optim:\n   - oops\n  x: [1,\n", 1))
    rc, _, err = run(capsys, "train", "unet", "--config", bad, "--output-dir", tmp_path / "o")
    line = one_error_line(err)
    assert rc == 2 and f"{bad}: YAML syntax error at line" in line


@pytest.mark.parametrize("content, match", [
    ("- a\n- b\n", "expected a mapping of config keys at the top level, got list"),
    (b"\xff\xfe\x00binary", "is not a UTF-8 text file"),
])
def test_config_that_is_not_a_mapping_or_not_text(tmp_path, capsys, content, match):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, _, err = run(capsys, "train", "unet", "--config", bad, "--output-dir", tmp_path / "o")
    assert rc == 2 and match in one_error_line(err)


def test_config_that_is_a_folder(tmp_path, capsys):
    rc, _, err = run(capsys, "train", "unet", "--config", tmp_path, "--output-dir", tmp_path / "o")
    assert rc == 2 and "is a folder; pass a YAML file" in one_error_line(err)


@pytest.mark.parametrize("item, match", [
    ("optim.learning_rate.x=1", "--set optim.learning_rate.x=1: optim.learning_rate is a value (0.001), not a section"),
    ("output_dir.sub=1", "output_dir is a value"),
    ("optim..batch_size=2", "empty key"),
    ("validation_prompts=[a, b", "the value is not valid YAML"),
])
def test_set_on_a_non_mapping_key_or_bad_yaml(tmp_path, capsys, item, match):
    rc, _, err = run(capsys, "train", "unet", "--config", TINY_UNET, "--output-dir", tmp_path / "o", "--set", item)
    assert rc == 2 and match in one_error_line(err)


def test_resume_from_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, caplog):
    from latentdiff.train.common import list_checkpoints, resolve_resume
    from latentdiff.train.unet import train

    out = tmp_path / "run"
    train(unet_cfg(out, **{"optim.max_train_steps": 4, "checkpoints_total_limit": 0}))
    bad = out / "checkpoints" / "checkpoint-4" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:1000])  # a crash or a full disk cut it short
    with caplog.at_level("WARNING", logger="latentdiff.train"):
        assert resolve_resume(out, "latest") == out / "checkpoints" / "checkpoint-2"
    assert "checkpoint-4 is damaged" in caplog.text and "falling back to the previous complete checkpoint" in caplog.text
    opt = out / "checkpoints" / "checkpoint-2" / "optimizer.bin"
    opt.write_bytes(opt.read_bytes()[:-100])
    rc, _, err = run(capsys, *train_args(out, "--resume", "latest", "--set", "optim.max_train_steps=4"))
    assert rc == 2 and "every checkpoint in" in one_error_line(err) and "is damaged" in err
    rc, _, err = run(capsys, *train_args(out, "--resume", out / "checkpoints" / "checkpoint-4"))
    assert rc == 2 and "the checkpoint is damaged (model.safetensors" in one_error_line(err)
    assert [s for s, _ in list_checkpoints(out)] == [2, 4], "nothing deleted"


def test_resume_after_the_architecture_changed(one_run, capsys):
    wide = one_run.parent / "wide.yaml"
    wide.write_text((ROOT / "configs" / "tiny.yaml").read_text().replace("block_out_channels: [16, 32]",
                                                                         "block_out_channels: [16, 48]"))
    rc, _, err = run(capsys, *train_args(one_run, "--resume", "latest", "--set", f"model={wide}",
                                         "--set", "optim.max_train_steps=4"))
    line = one_error_line(err)
    assert rc == 2 and "the checkpoint does not fit the model being trained (the architecture changed" in line
    assert "size mismatch" in line and "config.yaml" in line


@pytest.mark.parametrize("failure", ["torch", "oserror"])
def test_full_disk_while_checkpointing(one_run, capsys, monkeypatch, failure):
    import errno

    from accelerate import Accelerator

    def full(self, output_dir=None, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 10)  # the partial write
        if failure == "torch":
            raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 4160 vs 4054")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full)
    rc, _, err = run(capsys, *train_args(one_run, "--resume", "latest", "--set", "optim.max_train_steps=4"))
    line = one_error_line(err)
    assert rc == 2 and f"no space left on {one_run / 'checkpoints'} while saving checkpoint-4" in line
    assert "the partial checkpoint was removed" in line and "checkpoint-2 is kept" in line
    assert sorted(p.name for p in (one_run / "checkpoints").iterdir()) == ["checkpoint-2"]


def test_checkpoint_and_cache_files_get_the_same_permissions_as_everything_else(tmp_path):
    import os
    import stat

    from latentdiff.train.unet import train

    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        train(unet_cfg(out, cache_dir=str(tmp_path / "cache")))
    finally:
        os.umask(old)
    files = [p for p in [*out.rglob("*"), *(tmp_path / "cache").rglob("*")] if p.is_file()]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert any(k.endswith("model.safetensors") for k in modes) and any(k.startswith("cache") for k in modes)
    assert set(modes.values()) == {oct(0o644)}, {k: v for k, v in modes.items() if v != oct(0o644)}


def test_own_data_flat_folder_trains_without_a_test_split(tmp_path, capsys, caplog):
    """README's own-data command on a flat folder of images with .txt captions (no test/ subfolder)."""
    data = tmp_path / "my_images"
    data.mkdir()
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    for i, c in enumerate(colours):
        Image.new("RGB", (32, 32), c).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"{c} square")
    args = ["train", "unet", "--config", TINY_UNET, "--set", f"data.source={data}", "--output-dir", tmp_path / "o",
            "--set", "optim.max_train_steps=1", "--set", "optim.batch_size=4", "--set", "checkpointing_steps=0",
            "--device", "cpu"]
    with caplog.at_level("WARNING", logger="latentdiff.train"):
        rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert "training without validation: no 'test' subfolder in" in caplog.text
    assert "data.validation_split=" in caplog.text and "split=None" not in caplog.text.split("(in Python")[0]
    assert (tmp_path / "o" / "final" / "model_index.json").is_file()


def test_eval_checks_the_model_before_training_its_evaluator(tmp_path, capsys, monkeypatch):
    import latentdiff.eval_cli as C
    import latentdiff.train.evaluator as EV

    monkeypatch.setattr(C, "load_image_set", lambda *a, **k: pytest.fail("loaded data before checking --model"))
    monkeypatch.setattr(EV, "train_evaluator", lambda *a, **k: pytest.fail("trained before checking --model"))
    rc, _, err = run(capsys, "eval", "--model", tmp_path / "missing")
    assert rc == 2 and "not found" in one_error_line(err) and "missing" in err
    rc, _, err = run(capsys, "eval", "--samplers", "ddim,nope")
    assert rc == 2 and "Unknown sampler 'nope'" in one_error_line(err)
    rc, _, err = run(capsys, "eval", "--sampler", "DPM++ 2M Nope")
    assert rc == 2 and "Unknown sampler" in one_error_line(err) and "DPM++ 2M Karras" in err
    # an A1111 name passes the checks, as `latentdiff generate --sampler` takes it (then the data: the stub)
    with pytest.raises(pytest.fail.Exception, match="loaded data before checking --model"):
        C.main(["--sampler", "DPM++ 2M Karras", "--sections", "colour"])
    rc, _, err = run(capsys, "eval", "--device", "gpu")
    assert rc == 2 and "device 'gpu' is not a device name" in one_error_line(err)
    rc, _, err = run(capsys, "eval", "--out", tmp_path)
    assert rc == 2 and "is a folder; pass a file path" in one_error_line(err)
    rc, _, err = run(capsys, "eval", "--sections", "colour", "--colour-seeds", "0")
    assert rc == 2 and "--colour-seeds 0: give at least 1" in one_error_line(err)


# ---------------------------------------------------------------------------------------------- more of our own


def test_clip_training_that_diverges_saves_nothing(tmp_path, capsys):
    out = tmp_path / "clip"
    rc, _, err = run(capsys, "train", "clip", "--config", ROOT / "configs" / "tiny_clip.yaml", "--max-train-steps", 10,
                     "--set", "optim.learning_rate=1e30", "--set", "log_every=10", "--output-dir", out, "--no-progress")
    line = one_error_line(err)
    assert rc == 2 and "training diverged at step 10: the training loss is nan" in line
    assert not (out / "text_encoder").exists() and not (out / "checkpoints").exists()


def test_classifier_without_a_class_label(tmp_path, capsys):
    rc, _, err = run(capsys, "generate", "x", "--classifier", tmp_path / "cls", "--out", tmp_path / "o")
    assert rc == 2 and "--classifier needs --class NAME" in one_error_line(err)


def test_too_many_images_for_memory(tiny_pipeline_dir, tmp_path, capsys):
    rc, _, err = run(capsys, "generate", "x", "--model", tiny_pipeline_dir, "--out", tmp_path, "-n", 10**7, *FAST)
    assert rc == 2 and re.search(r"10000000 image\(s\) of 32×32 need about [\d.]+ GiB", one_error_line(err))


def test_a_damaged_classifier_config_is_one_line(tmp_path):
    from latentdiff.classifier import NoisyLatentClassifier

    folder = tmp_path / "cls"
    folder.mkdir()
    (folder / "config.json").write_text("{oops")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON .* \(the classifier config\) is damaged"):
        NoisyLatentClassifier.from_pretrained(folder)


def test_resume_latest_without_checkpoints_does_not_replace_an_old_final(one_run, capsys):
    import shutil as sh

    sh.rmtree(one_run / "checkpoints")
    final = (one_run / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    rc, _, err = run(capsys, *train_args(one_run, "--resume", "latest"))
    assert rc == 2 and "already holds a training run" in one_error_line(err) and "final" in err
    assert (one_run / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == final


def test_fresh_clip_run_into_another_clip_run_is_refused(tmp_path, capsys):
    out = tmp_path / "clip"
    (out / "text_encoder").mkdir(parents=True)
    (out / "text_encoder" / "config.json").write_text("{}")
    rc, _, err = run(capsys, "train", "clip", "--config", ROOT / "configs" / "tiny_clip.yaml", "--max-train-steps", 1,
                     "--output-dir", out, "--no-progress")
    assert rc == 2 and "already holds a training run" in one_error_line(err) and "text_encoder" in err
    assert (out / "text_encoder" / "config.json").read_text() == "{}"


@pytest.mark.parametrize("item, match", [
    ("log_every=0", "log_every must be >= 1"),
    ("checkpointing_steps=-5", "checkpointing_steps must be >= 0"),
    ("validation_sampler=nope", "validation_sampler 'nope' is unknown; choose one of ddpm"),
    ("validation_num_inference_steps=0", "validation_num_inference_steps must be >= 1"),
])
def test_loop_settings_are_checked_when_the_config_loads(tmp_path, capsys, item, match):
    rc, _, err = run(capsys, "train", "unet", "--config", TINY_UNET, "--output-dir", tmp_path / "o", "--set", item)
    assert rc == 2 and match in one_error_line(err)
    assert not (tmp_path / "o").exists(), "refused before anything ran"


def test_from_png_written_before_this_change_still_regenerates(tiny_pipeline_dir, tmp_path, capsys):
    """Older PNGs stored classifier_scale=1.0 without a classifier; that must not become an error."""
    from PIL.PngImagePlugin import PngInfo

    old = {"prompt": "red apple", "negative_prompt": "", "seed": 1, "sampler": "ddim", "steps": 2, "eta": 0.0,
           "guidance_scale": 5.0, "height": 32, "width": 32, "model": str(tiny_pipeline_dir),
           "timestep_spacing": "leading", "guidance_rescale": 0.0, "lora": [], "classifier": None,
           "class_label": None, "classifier_scale": 1.0}
    info = PngInfo()
    info.add_text(PNG_KEY, json.dumps(old))
    png = tmp_path / "old.png"
    Image.new("RGB", (32, 32)).save(png, pnginfo=info)
    rc, out, err = run(capsys, "generate", "--from-png", png, "--out", tmp_path / "o")
    assert rc == 0, err
    assert json.loads(Image.open(out.split()[0]).text[PNG_KEY])["seed"] == 1


def test_a_checkpoint_file_that_is_whole_but_not_ours_is_one_line(one_run, capsys):
    import zipfile

    opt = one_run / "checkpoints" / "checkpoint-2" / "optimizer.bin"
    with zipfile.ZipFile(opt, "w") as z:  # a valid zip, so the integrity check passes; not a torch archive
        z.writestr("notes.txt", "replaced by a sync tool")
    rc, _, err = run(capsys, *train_args(one_run, "--resume", "latest", "--set", "optim.max_train_steps=4"))
    line = one_error_line(err)
    assert rc == 2 and "checkpoint-2: the checkpoint cannot be read (RuntimeError:" in line
    assert "resume from an older one" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_training_on_cuda_without_a_gpu_fails_before_loading_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("latentdiff.train.unet.load_image_data", lambda *a, **k: pytest.fail("loaded data"))
    monkeypatch.setattr("latentdiff.train.unet.build_components", lambda *a, **k: pytest.fail("built the model"))
    rc, _, err = run(capsys, "train", "unet", "--config", TINY_UNET, "--output-dir", tmp_path / "o", "--device", "cuda")
    assert rc == 2 and "device=cuda but no CUDA device is available" in one_error_line(err)


def test_shipped_configs_work_from_another_folder(tmp_path, capsys, monkeypatch):
    """configs/tiny_unet.yaml says `model: configs/tiny.yaml` (a path from the repository root)."""
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, *train_args(tmp_path / "o", "--set", "optim.max_train_steps=1", "--set",
                                         "checkpointing_steps=0"))
    assert rc == 0, err
    assert (tmp_path / "o" / "final" / "model_index.json").is_file()
