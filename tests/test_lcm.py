"""LCM-LoRA distillation (`latentdiff train lcm`): it trains on the shared loop (its kill/resume check
is in test_loop.py), and its LoRA loads in diffusers with LCMScheduler and gives our lcm sampler's
image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["red apple", "grinning face"]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig
    from latentdiff.pipelines import TextToImagePipeline
    from latentdiff.train.lcm import main

    root = tmp_path_factory.mktemp("lcm")
    TextToImagePipeline.from_config(load_config(ROOT / "configs" / "tiny.yaml", ModelConfig), seed=0).save_pretrained(
        root / "pipe")
    torch.set_num_threads(1)
    assert main(["--config", str(ROOT / "configs" / "tiny_lcm.yaml"), "--base", str(root / "pipe"), "--output-dir",
                 str(root / "run"), "--device", "cpu", "--max-train-steps", "8", "--set", "lora.rank=8",
                 "--set", "optim.learning_rate=3e-3"]) == 0
    return root


def test_lcm_lora_loads_in_diffusers_with_lcm_scheduler_and_gives_our_image(distilled):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from latentdiff.pipelines import TextToImagePipeline

    lora = distilled / "run" / "final" / "pytorch_lora_weights.safetensors"
    summary = json.loads((distilled / "run" / "final" / "training_summary.json").read_text())
    assert summary["trainer"] == "lcm" and summary["steps"] == 8 and summary["sampler"] == "lcm"

    ours = TextToImagePipeline.from_pretrained(distilled / "pipe")
    base = ours(PROMPTS, seed=[0, 1], sampler="lcm", num_inference_steps=4, guidance_scale=1.0, output_type="np").images
    ours.load_lora(lora, adapter_name="lcm")
    mine = ours(PROMPTS, seed=[0, 1], sampler="lcm", num_inference_steps=4, guidance_scale=1.0, output_type="np").images
    assert np.abs(mine - base).max() > 1e-3  # the distilled LoRA changes the image

    sd = StableDiffusionPipeline.from_pretrained(distilled / "pipe", safety_checker=None)
    sd.scheduler = LCMScheduler.from_config(sd.scheduler.config)
    sd.load_lora_weights(str(lora))
    theirs = sd(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], num_inference_steps=4,
                guidance_scale=1.0, output_type="np").images
    assert np.abs(theirs - mine).max() <= 1e-3


def test_lcm_config_errors_are_one_line(distilled, tmp_path, capsys):
    from latentdiff.cli import main

    rc = main(["train", "lcm", "--config", str(ROOT / "configs" / "tiny_lcm.yaml"), "--base", str(distilled / "pipe"),
               "--output-dir", str(tmp_path / "o"), "--train-text-encoder"])
    err = capsys.readouterr().err
    assert rc == 2 and "LCM distillation adapts the U-Net only" in err and "Traceback" not in err


def test_eval_loads_the_lora_it_is_given(distilled, tmp_path):
    """`latentdiff eval --lora PATH[:SCALE]` evaluates the model with that adapter (how the LCM-LoRA
    numbers in README were measured); a LoRA that is not there is an error, not a silent base model."""
    from latentdiff import eval_cli

    lora = distilled / "run" / "final" / "pytorch_lora_weights.safetensors"
    base = ["--model", str(distilled / "pipe"), "--dataset", "emoji", "--sections", "colour", "--colour-limit", "2",
            "--sampler", "lcm", "--steps", "2", "--guidance", "1", "--no-progress"]
    assert eval_cli.main(base + ["--lora", f"{lora}:0.5", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["lora"] == [f"{lora}:0.5"]
    with pytest.raises(Exception, match="nope"):
        eval_cli.main(base + ["--lora", str(tmp_path / "nope.safetensors")])
