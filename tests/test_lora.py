"""LoRA: files (diffusers + kohya), loading into our pipeline and into diffusers, adapters, training.

Cross-checks go through diffusers' own code: ``StableDiffusionPipeline.load_lora_weights`` must read
our files (both formats) into the same modules and produce the same image as our pipeline.
"""

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff import lora as L

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["red apple", "cat face"]
SAMPLING = dict(num_inference_steps=4, guidance_scale=3.0)


def random_lora(unet, text_encoder=None, *, rank=4, alpha=2.0, seed=0, suffixes=L.UNET_ATTENTION_TARGETS,
                te_rank=2, scale=0.1):
    """A LoRA state with random A and B for ``suffixes`` of the U-Net (and the text encoder's attention),
    built from the modules' shapes alone (independent of peft and of our add_lora)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    parts = [("unet", unet, suffixes, rank)]
    if text_encoder is not None:
        parts.append(("text_encoder", text_encoder, L.TEXT_ENCODER_ATTENTION_TARGETS, te_rank))
    for component, model, sfx, r in parts:
        for name, m in model.named_modules():
            if not any(name.endswith("." + s) for s in sfx):
                continue
            if isinstance(m, torch.nn.Linear):
                a, b = torch.randn(r, m.in_features, generator=g), torch.randn(m.out_features, r, generator=g)
            elif isinstance(m, torch.nn.Conv2d):
                a = torch.randn(r, m.in_channels, *m.kernel_size, generator=g)
                b = torch.randn(m.out_channels, r, 1, 1, generator=g)
            else:
                continue
            path = ("text_model." + name) if component == "text_encoder" else name
            state[f"{component}.{path}.lora_A.weight"] = a * scale
            state[f"{component}.{path}.lora_B.weight"] = b * scale
            state[f"{component}.{path}.alpha"] = torch.tensor(float(alpha))
    return state


@torch.no_grad()
def forward(pipe):
    """One text-encoder + U-Net forward on fixed inputs: a cheap, exact probe of what the LoRAs do."""
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    return pipe.unet(x, torch.tensor([999, 500]), encoder_hidden_states=pipe.encode_prompt(PROMPTS)).sample


def ours(pipe, seeds=(0, 1)):
    return pipe(PROMPTS, seed=list(seeds), sampler="ddim", eta=0.0, output_type="np", **SAMPLING).images


def theirs(sd, seeds=(0, 1)):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return sd(PROMPTS, generator=gens, output_type="np", **SAMPLING).images


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, tiny_pipeline_dir):
    """A random U-Net + text-encoder LoRA (rank 4, α = 2 ≠ rank) saved in both formats."""
    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(tiny_pipeline_dir)
    state = random_lora(pipe.unet, pipe.text_encoder, rank=4, alpha=2.0)
    root = tmp_path_factory.mktemp("lora")
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    te_state = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    diffusers_path = L.save_lora(root / "ours", unet_state, te_state, metadata={"base_model": "tiny", "rank": 4})
    kohya_path = L.save_kohya(root / "ours_kohya.safetensors", state)
    return {"state": state, "diffusers": diffusers_path, "kohya": kohya_path}


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------


def test_saved_file_is_diffusers_format_with_metadata(lora_files):
    from safetensors import safe_open

    path = lora_files["diffusers"]
    assert path.name == "pytorch_lora_weights.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys, header = set(f.keys()), f.metadata()
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight" in keys
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert not any(k.endswith(".alpha") for k in keys)  # alpha lives in diffusers' LoraConfig metadata
    config = json.loads(header["lora_adapter_metadata"])
    assert (config["unet.r"], config["unet.lora_alpha"], config["text_encoder.r"]) == (4, 2.0, 2)
    assert json.loads(header["latentdiff"]) == {"base_model": "tiny", "rank": 4}
    back = L.read_lora(path)
    assert back.format == "diffusers" and back.training["rank"] == 4
    assert back.state.keys() == lora_files["state"].keys()
    assert all(torch.equal(back.state[k], v) for k, v in lora_files["state"].items())


def test_kohya_round_trip_is_lossless(lora_files):
    state = lora_files["state"]
    kohya = L.to_kohya(state)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight" in kohya
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in kohya
    back = L.from_kohya(kohya)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    # file level: kohya file -> our state -> kohya again, tensors equal
    read = L.read_lora(lora_files["kohya"])
    assert read.format == "kohya"
    again = L.to_kohya(read.state)
    assert again.keys() == kohya.keys() and all(torch.equal(again[k], kohya[k]) for k in kohya)


def test_legacy_diffusers_keys_are_read(lora_files, tmp_path):
    """Pre-peft diffusers files (``to_q.lora.down.weight``, ``q_proj.lora_linear_layer.down.weight``),
    written with diffusers' own converter, read back to the same A and B (α = r: no alpha stored)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import save_file

    state = {k: v for k, v in lora_files["state"].items() if not k.endswith(".alpha")}
    legacy = convert_state_dict_to_diffusers(state)
    assert not any(".lora_A." in k for k in legacy)
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    back = L.read_lora(tmp_path / "legacy.safetensors")
    assert back.format == "diffusers-legacy"
    assert {k for k in back.state if not k.endswith(".alpha")} == state.keys()
    assert all(torch.equal(back.state[k], v) for k, v in state.items())
    assert all(float(v) == back.state[k.replace(".alpha", ".lora_A.weight")].shape[0]
               for k, v in back.state.items() if k.endswith(".alpha"))


def test_kohya_names_round_trip_for_every_layer(tiny_config):
    """Every Linear/Conv2d of the tiny, emoji and SD 1.5 architectures maps to a kohya name and back."""
    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig

    for name in ("tiny", "emoji", "sd15"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml", ModelConfig)
        with torch.device("meta"):
            unet = cfg.unet.build(cfg.resolution // cfg.vae_scale_factor, cfg.vae.latent_channels,
                                  cfg.text_encoder.hidden_size)
            te = cfg.text_encoder.build()
        n = 0
        for component, model in (("unet", unet), ("text_encoder", te)):
            for path, m in model.named_modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    expected = path if component == "unet" else "text_model." + path
                    assert L.module_from_kohya_name(L.kohya_name(component, path)) == (component, expected)
                    n += 1
        assert n > 50


def test_diffusers_reads_our_kohya_names_into_the_right_modules(tiny_pipeline_dir, tmp_path):
    """A kohya export covering every Linear/Conv2d of the tiny U-Net and text encoder: diffusers' own
    kohya reader puts each A into the module we named."""
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    state = {}
    g = torch.Generator().manual_seed(0)
    for component, model in (("unet", sd.unet), ("text_encoder", sd.text_encoder)):
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                a, b = torch.randn(2, m.in_features, generator=g), torch.randn(m.out_features, 2, generator=g)
            elif isinstance(m, torch.nn.Conv2d):
                a = torch.randn(2, m.in_channels, *m.kernel_size, generator=g)
                b = torch.randn(m.out_channels, 2, 1, 1, generator=g)
            else:
                continue
            path = name if component == "unet" else "text_model." + name
            state.update({f"{component}.{path}.lora_A.weight": a, f"{component}.{path}.lora_B.weight": b,
                          f"{component}.{path}.alpha": torch.tensor(1.0)})
    assert len(state) > 200
    path = L.save_kohya(tmp_path / "all.safetensors", state)
    sd.load_lora_weights(str(path), adapter_name="x")
    for component, model in (("unet", sd.unet), ("text_encoder", sd.text_encoder)):
        modules = dict(model.named_modules())
        for key, a in state.items():
            if key.startswith(component + ".") and key.endswith(".lora_A.weight"):
                name = key[len(component) + 1 : -len(".lora_A.weight")].removeprefix("text_model.")
                assert torch.equal(modules[name].lora_A["x"].weight, a), name


# ----------------------------------------------------------------------------------------------
# Same image as diffusers
# ----------------------------------------------------------------------------------------------


def test_diffusers_produces_the_same_image_with_our_lora(tiny_pipeline_dir, lora_files, tiny_pipe):
    from diffusers import StableDiffusionPipeline

    base = ours(tiny_pipe)
    tiny_pipe.load_lora(lora_files["diffusers"], adapter_name="ours")
    with_lora = ours(tiny_pipe)
    assert np.abs(with_lora - base).max() > 1e-2  # the LoRA visibly changes the image

    sd = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    assert np.abs(theirs(sd) - base).max() < 1e-4  # same sampler settings without LoRA
    sd.load_lora_weights(str(lora_files["diffusers"]))
    assert np.abs(theirs(sd) - with_lora).max() < 1e-4
    # alpha/rank = 0.5 is honoured: scale 2 (what ignoring alpha would give) differs
    tiny_pipe.set_lora_scale("ours", 2.0)
    assert np.abs(ours(tiny_pipe) - with_lora).max() > 1e-3

    sd.unload_lora_weights()
    sd.load_lora_weights(str(lora_files["kohya"]))  # diffusers' kohya reader
    assert np.abs(theirs(sd) - with_lora).max() < 1e-4


def test_unload_restores_the_text_encoder_and_the_same_name_loads_again(lora_files, tiny_pipe):
    base = forward(tiny_pipe)
    tiny_pipe.load_lora(lora_files["diffusers"], adapter_name="x")
    once = forward(tiny_pipe)
    tiny_pipe.unload_lora()
    assert _no_adapters(tiny_pipe) and getattr(tiny_pipe.text_encoder, "peft_config", None) is None
    assert torch.equal(forward(tiny_pipe), base) and tiny_pipe.list_loras() == {}
    tiny_pipe.load_lora(lora_files["diffusers"], adapter_name="x")
    assert torch.equal(forward(tiny_pipe), once)


def test_kohya_file_loads_into_our_pipeline_like_the_diffusers_file(lora_files, tiny_pipe):
    tiny_pipe.load_lora(lora_files["diffusers"], adapter_name="d")
    a = forward(tiny_pipe)
    tiny_pipe.unload_lora()
    tiny_pipe.load_lora(lora_files["kohya"], adapter_name="k")
    assert tiny_pipe.list_loras()["k"]["format"] == "kohya"
    assert torch.equal(forward(tiny_pipe), a)


# ----------------------------------------------------------------------------------------------
# Adapters: scale, composition, fuse, disable, unload
# ----------------------------------------------------------------------------------------------


def test_scale_zero_equals_no_lora_and_disable_enable(lora_files, tiny_pipe):
    base = forward(tiny_pipe)
    tiny_pipe.load_lora(lora_files["diffusers"], adapter_name="a", scale=0.0)
    assert torch.equal(forward(tiny_pipe), base)
    tiny_pipe.set_lora_scale("a", 1.0)
    on = forward(tiny_pipe)
    assert (on - base).abs().max() > 1e-2
    tiny_pipe.disable_lora()
    assert torch.equal(forward(tiny_pipe), base)
    tiny_pipe.enable_lora()
    assert torch.equal(forward(tiny_pipe), on)


def test_two_adapters_compose_and_fuse_unfuse_restores(tmp_path, tiny_pipe):
    unet_w0 = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    te_w0 = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items()}
    sa = random_lora(tiny_pipe.unet, tiny_pipe.text_encoder, rank=4, alpha=2.0, seed=1)
    sb = random_lora(tiny_pipe.unet, None, rank=2, alpha=3.0, seed=2,
                     suffixes=L.UNET_ATTENTION_TARGETS + L.UNET_FF_TARGETS)
    pa, pb = L.save_lora_state(tmp_path / "a", sa), L.save_kohya(tmp_path / "b.safetensors", sb)
    tiny_pipe.load_lora(pa, adapter_name="a", scale=0.7)
    tiny_pipe.load_lora(pb, adapter_name="b", scale=-0.4)
    assert set(tiny_pipe.list_loras()) == {"a", "b"}
    both = forward(tiny_pipe)
    tiny_pipe.set_adapters(["a"])
    only_a = forward(tiny_pipe)
    assert (both - only_a).abs().max() > 1e-3
    tiny_pipe.set_adapters(["a", "b"], [0.7, -0.4])
    assert torch.equal(forward(tiny_pipe), both)

    # fused weights are W + Σ_i s_i (α_i / r_i) B_i A_i, computed here by hand
    tiny_pipe.fuse_lora()
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    expected = unet_w0[f"{module}.weight"].clone()
    for state, s, r, alpha in ((sa, 0.7, 4, 2.0), (sb, -0.4, 2, 3.0)):
        expected += s * alpha / r * state[f"unet.{module}.lora_B.weight"] @ state[f"unet.{module}.lora_A.weight"]
    fused = dict(tiny_pipe.unet.named_modules())[module].get_base_layer().weight
    assert torch.allclose(fused, expected, atol=1e-6)
    assert (forward(tiny_pipe) - both).abs().max() < 1e-5
    with pytest.raises(ValueError, match="unfuse_lora"):
        tiny_pipe.set_lora_scale("a", 1.0)
    tiny_pipe.unfuse_lora()
    restored = L.base_state_dict(tiny_pipe.unet)
    assert max((restored[k] - v).abs().max().item() for k, v in unet_w0.items()) <= 1e-6
    assert torch.equal(forward(tiny_pipe), both)

    tiny_pipe.unload_lora("b")
    assert torch.equal(forward(tiny_pipe), only_a) and list(tiny_pipe.list_loras()) == ["a"]
    tiny_pipe.unload_lora()
    assert not any("lora" in n for n, _ in tiny_pipe.unet.named_modules())
    assert all(torch.equal(tiny_pipe.unet.state_dict()[k], v) for k, v in unet_w0.items())
    assert all(torch.equal(tiny_pipe.text_encoder.state_dict()[k], v) for k, v in te_w0.items())


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def _no_adapters(pipe):
    return not any("lora" in n for m in (pipe.unet, pipe.text_encoder) for n, _ in m.named_modules())


def test_lora_for_another_architecture_is_an_error_listing_keys(tmp_path, tiny_pipe):
    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig

    cfg = load_config(ROOT / "configs" / "emoji.yaml", ModelConfig)
    with torch.device("meta"):
        emoji_unet = cfg.unet.build(16, 4, cfg.text_encoder.hidden_size)
    shapes = random_lora(emoji_unet.to_empty(device="cpu"), rank=4)
    path = L.save_lora_state(tmp_path / "emoji_lora", shapes)
    with pytest.raises(ValueError, match="does not match the model") as e:
        tiny_pipe.load_lora(path)
    msg = str(e.value)
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in msg
    assert "no module" in msg and "do not fit" in msg  # missing modules and wrong shapes are both named
    assert _no_adapters(tiny_pipe) and tiny_pipe.list_loras() == {}


def test_rank_layout_mismatch_and_foreign_kohya_keys_are_errors(tmp_path, tiny_pipe):
    state = random_lora(tiny_pipe.unet, rank=4)
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight"
    state[key] = state[key][:, :2]  # B of rank 2 against A of rank 4
    with pytest.raises(ValueError, match="same rank"):
        L.save_lora_state(tmp_path / "bad", state)
    with pytest.raises(ValueError, match="attn2.to_k"):
        L.match_lora(state, {"unet": tiny_pipe.unet, "text_encoder": tiny_pipe.text_encoder})
    kohya = L.to_kohya(random_lora(tiny_pipe.unet, rank=2))
    kohya["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(2, 32)
    kohya["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(32, 2)
    from safetensors.torch import save_file

    save_file(kohya, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(ValueError, match="lora_te2_"):
        tiny_pipe.load_lora(tmp_path / "sdxl.safetensors")
    assert _no_adapters(tiny_pipe)


def test_rank_must_be_positive(tiny_pipe, tmp_path, capsys):
    from latentdiff.cli import main

    for rank in (0, -2):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            L.add_lora(tiny_pipe.unet, L.target_module_names(tiny_pipe.unet, L.UNET_ATTENTION_TARGETS), rank=rank)
    assert _no_adapters(tiny_pipe)
    (tmp_path / "img").mkdir()
    assert main(["train", "lora", "--base", "emoji", "--data", str(tmp_path / "img"), "--rank", "0"]) == 2
    assert "lora.rank must be a positive integer" in capsys.readouterr().err


def test_file_errors(tmp_path, lora_files, tiny_pipe):
    (tmp_path / "x.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle"):
        tiny_pipe.load_lora(tmp_path / "x.bin")
    (tmp_path / "two").mkdir()
    for n in ("a", "b"):
        (tmp_path / "two" / f"{n}.safetensors").write_bytes(lora_files["kohya"].read_bytes())
    with pytest.raises(FileNotFoundError, match="weight_name"):
        tiny_pipe.load_lora(tmp_path / "two")
    tiny_pipe.load_lora(tmp_path / "two", weight_name="b.safetensors", adapter_name="b")
    with pytest.raises(ValueError, match="already loaded"):
        tiny_pipe.load_lora(lora_files["kohya"], adapter_name="b")
    with pytest.raises(FileNotFoundError):
        tiny_pipe.load_lora(tmp_path / "missing.safetensors")


def test_repo_ids_go_through_the_hub_client(lora_files, tiny_pipe, monkeypatch):
    """A repo id is fetched with latentdiff.hub (snapshot, or the one file named by weight_name)."""
    import latentdiff.hub as hub

    calls = []
    monkeypatch.setattr(hub, "download_repo", lambda repo, **k: calls.append(("repo", repo, k.get("revision")))
                        or lora_files["diffusers"].parent)
    monkeypatch.setattr(hub, "download_file", lambda repo, name, **k: calls.append(("file", repo, name))
                        or lora_files["kohya"])
    tiny_pipe.load_lora("user/style-lora", adapter_name="a", revision="v1")
    tiny_pipe.load_lora("user/style-lora", adapter_name="b", weight_name="style_kohya.safetensors")
    assert calls == [("repo", "user/style-lora", "v1"), ("file", "user/style-lora", "style_kohya.safetensors")]
    assert {n: v["format"] for n, v in tiny_pipe.list_loras().items()} == {"a": "diffusers", "b": "kohya"}


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def test_only_lora_parameters_get_gradients(tiny_pipe):
    unet, te = tiny_pipe.unet, tiny_pipe.text_encoder
    params = L.add_lora(unet, L.target_module_names(unet, L.UNET_ATTENTION_TARGETS), rank=2, alpha=2)
    params += L.add_lora(te, L.target_module_names(te, L.TEXT_ENCODER_ATTENTION_TARGETS), rank=2, alpha=2)
    ids = tiny_pipe.tokenizer(["red apple"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    x = torch.randn(1, 4, 16, 16)
    out = unet(x, torch.tensor([500]), encoder_hidden_states=te(ids)[0]).sample
    out.square().mean().backward()
    with_grad = {n for m in (unet, te) for n, p in m.named_parameters() if p.grad is not None}
    trainable = {n for m in (unet, te) for n, p in m.named_parameters() if p.requires_grad}
    assert with_grad == trainable and len(trainable) == len(params)
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # B starts at 0 (LoRA is the identity at step 0), so only B gets a nonzero gradient
    assert all(p.grad.abs().sum() > 0 for m in (unet, te) for n, p in m.named_parameters() if ".lora_B." in n)


def _one_image_folder(root: Path) -> Path:
    folder = root / "one"
    folder.mkdir()
    im = np.full((48, 40, 3), 255, np.uint8)
    im[10:30, 8:28] = (200, 30, 30)
    Image.fromarray(im).save(folder / "subject.png")
    return folder


def _config(base, data, out, **overrides):
    from latentdiff.config import load_config
    from latentdiff.train.lora import LoraTrainConfig as Cfg

    sets = {"base": str(base), "data.source": str(data), "output_dir": str(out), "device": "cpu",
            "optim.max_train_steps": 4, "checkpointing_steps": 2, "data.caption_template": "{caption}", **overrides}
    return load_config(ROOT / "configs" / "tiny_lora.yaml", Cfg, sets)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pipeline_dir, monkeypatch_module):
    """4 steps on a one-image DreamBooth folder with a text-encoder LoRA and prior preservation (2
    generated class images); the pipeline the trainer used is captured to check its base weights."""
    from latentdiff.pipelines import TextToImagePipeline
    from latentdiff.train import lora as trainer

    root = tmp_path_factory.mktemp("train")
    data = _one_image_folder(root)
    captured = []
    original = TextToImagePipeline.from_pretrained.__func__

    def spy(cls, *a, **k):
        pipe = original(cls, *a, **k)
        captured.append(pipe)
        return pipe

    monkeypatch_module.setattr(TextToImagePipeline, "from_pretrained", classmethod(spy))
    cfg = _config(tiny_pipeline_dir, data, root / "run", **{
        "data.instance_prompt": "a sks emoji", "lora.text_encoder": True, "lora.text_encoder_learning_rate": 5e-4,
        "lora.alpha": 2.0, "validation_prompts": [""], "prior.weight": 1.0, "prior.class_prompt": "emoji",
        "prior.num_class_images": 2, "prior.class_sampler_steps": 2})
    summary = trainer.train(cfg)
    monkeypatch_module.undo()
    return {"summary": summary, "pipe": captured[0], "root": root, "data": data, "cfg": cfg}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_training_one_image_leaves_base_bit_identical(trained, tiny_pipeline_dir):
    from latentdiff.pipelines import TextToImagePipeline

    s = trained["summary"]
    assert s["steps"] == 4 and s["num_images"] == 1 and s["base_weights_unchanged"]
    fresh = TextToImagePipeline.from_pretrained(tiny_pipeline_dir)
    used = trained["pipe"]
    for name in ("unet", "text_encoder"):
        before, after = L.base_state_dict(getattr(fresh, name)), L.base_state_dict(getattr(used, name))
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    lora = L.read_lora(s["lora"])
    b = [v for k, v in lora.state.items() if k.endswith("lora_B.weight")]
    assert all(v.abs().sum() > 0 for v in b)  # every B moved off its zero init: it trained
    assert any(k.startswith("text_encoder.") for k in lora.state)
    assert lora.training["instance_prompt"] == "a sks emoji" and lora.training["steps"] == 4
    assert lora.training["rank"] == 4 and lora.training["alpha"] == 2.0
    assert lora.training["prompts"] == ["a sks emoji"]
    kohya = L.read_lora(s["kohya"])
    assert kohya.format == "kohya" and all(torch.equal(kohya.state[k], v) for k, v in lora.state.items())
    assert (Path(s["lora"]).parent / "before_after.png").is_file()
    assert len(list((trained["root"] / "run" / "class_images").glob("*.png"))) == 2
    name = fresh.load_lora(s["lora"])  # strict loading accepts what training wrote
    assert fresh.list_loras()[name]["components"] == ["unet", "text_encoder"]


def test_resume_is_exact(trained, caplog):
    """Resume the fixture's own run from its step-2 checkpoint (a copy of the folder, minus the later
    checkpoint and the export): steps 3-4 again give the bit-identical LoRA, text encoder included."""
    import shutil

    from latentdiff.train import lora as trainer
    from latentdiff.train.common import list_checkpoints

    run, out = trained["root"] / "run", trained["root"] / "resumed"
    shutil.copytree(run, out)
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "final")
    with caplog.at_level(logging.INFO, logger="latentdiff"):
        summary = trainer.train(dataclasses.replace(trained["cfg"], output_dir=str(out)), resume="latest")
    assert summary["steps"] == 4
    assert "checkpoint-2 at step 2" in caplog.text, "it must continue from step 2, not start again"
    a, b = L.read_lora(trained["summary"]["lora"]).state, L.read_lora(summary["lora"]).state
    assert any(k.startswith("text_encoder.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_instance_prompt_without_captions_is_a_clear_error(trained, tiny_pipeline_dir):
    from latentdiff.train import lora as trainer

    cfg = _config(tiny_pipeline_dir, trained["data"], trained["root"] / "noprompt")
    with pytest.raises(ValueError, match="instance_prompt"):
        trainer.train(cfg)


def test_generate_cli_with_lora(lora_files, tiny_pipeline_dir, tmp_path):
    from latentdiff.cli import main

    args = ["generate", "red apple", "--model", str(tiny_pipeline_dir), "--steps", "1", "--seed", "0"]
    assert main(args + ["--out", str(tmp_path / "a"), "--lora", f"{lora_files['kohya']}:0"]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert main(args + ["--out", str(tmp_path / "c"), "--lora", f"{lora_files['diffusers'].parent}:1.0"]) == 0
    a, b, c = (np.asarray(Image.open(next((tmp_path / d).glob("*.png")))) for d in "abc")
    assert np.array_equal(a, b) and not np.array_equal(b, c)


def test_prior_class_data_keeps_its_own_captions_with_a_template(tmp_path, tiny_pipeline_dir):
    """prior.class_prompt "{caption}…" with class_data: regularisation images under their own captions
    (kohya-style); without class_data, or on a folder with no captions, it is a clear error."""
    from latentdiff.train import lora as trainer

    reg = tmp_path / "reg"
    reg.mkdir()
    rows = [("apple.png", "red apple", (200, 30, 30)), ("leaf.png", "green leaf", (30, 160, 40))]
    for name, _, colour in rows:
        Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(reg / name)
    (reg / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": c}) + "\n" for f, c, _ in rows))

    cfg = _config(tiny_pipeline_dir, reg, tmp_path / "run", **{
        "prior.weight": 1.0, "prior.class_data": str(reg), "prior.class_prompt": "{caption}, plain"})
    data = trainer.class_images(cfg, None, tmp_path / "run", 32)
    assert sorted(data.captions) == ["green leaf, plain", "red apple, plain"]
    fixed = dataclasses.replace(cfg, prior=dataclasses.replace(cfg.prior, class_prompt="emoji"))
    assert trainer.class_images(fixed, None, tmp_path / "run", 32).captions == ["emoji", "emoji"]

    with pytest.raises(ValueError, match="needs prior.class_data"):
        _config(tiny_pipeline_dir, reg, tmp_path / "x", **{"prior.weight": 1.0, "prior.class_prompt": "{caption}"})
    bare = _one_image_folder(tmp_path)
    no_caps = dataclasses.replace(cfg, prior=dataclasses.replace(cfg.prior, class_data=str(bare)))
    with pytest.raises(ValueError, match="has no captions"):
        trainer.class_images(no_caps, None, tmp_path / "run", 32)
