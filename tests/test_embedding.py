"""Textual inversion (`latentdiff train embedding`): only the new token's vectors train, both file
layouts hold them and load back into the pipeline (and diffusers' loader), the prompt with the token
changes the image. Kill/resume exactness is in test_loop.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def taught(tmp_path_factory, ):
    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig
    from latentdiff.pipelines import TextToImagePipeline
    from latentdiff.train.embedding import main

    root = tmp_path_factory.mktemp("ti")
    TextToImagePipeline.from_config(load_config(ROOT / "configs" / "tiny.yaml", ModelConfig), seed=0).save_pretrained(
        root / "pipe")
    torch.set_num_threads(1)
    assert main(["--config", str(ROOT / "configs" / "tiny_embedding.yaml"), "--base", str(root / "pipe"),
                 "--output-dir", str(root / "run"), "--device", "cpu", "--max-train-steps", "6",
                 "--set", "optim.learning_rate=5e-2"]) == 0
    return root


def test_only_the_new_vectors_change_and_both_layouts_hold_them(taught):
    from latentdiff.pipelines import TextToImagePipeline

    final = taught / "run" / "final"
    summary = json.loads((final / "training_summary.json").read_text())
    assert summary["trainer"] == "embedding" and summary["tokens"] == ["<tiny-emoji>", "<tiny-emoji>_1"]
    learned = load_file(str(final / "learned_embeds.safetensors"))["<tiny-emoji>"]
    a1111 = load_file(str(final / "tiny-emoji.safetensors"))["emb_params"]
    assert learned.shape == (2, 32) and torch.equal(learned, a1111)

    base = TextToImagePipeline.from_pretrained(taught / "pipe")
    table = base.text_encoder.get_input_embeddings().weight.detach()
    ids = base.tokenizer("face", add_special_tokens=False).input_ids  # init_word: face
    start = table[[ids[i % len(ids)] for i in range(2)]]
    assert (learned - start).abs().max() > 1e-3, "the vectors did not train"

    pipe = TextToImagePipeline.from_pretrained(taught / "pipe")
    pipe.load_textual_inversion(final / "learned_embeds.safetensors")
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[: len(table)], table), "rows of the existing vocabulary changed"
    for name, p in base.unet.state_dict().items():  # the export is a file, the model itself is untouched
        assert torch.equal(p, pipe.unet.state_dict()[name])

    kw = dict(seed=0, num_inference_steps=3, output_type="np")
    img = pipe("<tiny-emoji>", **kw).images
    other = TextToImagePipeline.from_pretrained(taught / "pipe")
    other.load_textual_inversion(final / "tiny-emoji.safetensors", token="<tiny-emoji>")
    assert np.array_equal(other("<tiny-emoji>", **kw).images, img)  # the A1111 layout is the same embedding
    assert np.abs(pipe("face", **kw).images - img).max() > 1e-3  # the token is not just its init word


def test_a_token_that_is_already_a_word_is_refused(taught, tmp_path, capsys):
    from latentdiff.cli import main

    # flags only, no --config: the trainer's defaults under them, through the same strict loader
    rc = main(["train", "embedding", "--base", str(taught / "pipe"), "--data", "emoji", "--output-dir",
               str(tmp_path / "o"), "--token", "apple", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "already a word of this tokenizer" in err and "Traceback" not in err
