"""Hub sharing end to end with the real huggingface_hub client against a loopback fake Hub.

The fake (tests/hub_server.py) listens on 127.0.0.1 at a random free port; ``HF_ENDPOINT`` and
huggingface_hub's import-time constants point at it, the cache lives in a temporary ``HF_HOME``,
no token is read from the developer's machine, and Xet is disabled (``HF_HUB_DISABLE_XET``) so
``upload_folder`` takes the plain commit path (preupload -> NDJSON commit) that the fake serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

try:
    from hub_server import FakeHub
except ImportError:  # tests/ imported as a package
    from tests.hub_server import FakeHub

from latentdiff import hub as lhub
from latentdiff import model_card as mc

# Random per run, so "the token never appears" cannot pass by luck of a fixed string.
TOKEN = "hf_write_" + secrets.token_hex(16)
READ_TOKEN = "hf_read_" + secrets.token_hex(16)
BAD_TOKEN = "hf_bad_" + secrets.token_hex(16)
ROOT = Path(__file__).resolve().parents[1]
LORA_MODULES = [
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
    "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
]


# ---------------------------------------------------------------------------- fixtures


def _point_client_at(monkeypatch, endpoint: str, home: Path, *, offline: bool = False) -> None:
    """Point huggingface_hub at ``endpoint`` with its cache and token file under ``home``.

    huggingface_hub reads HF_ENDPOINT/HF_HOME/... into ``huggingface_hub.constants`` at import time
    (already done by diffusers/transformers), so the environment alone is not enough: the module
    attributes that ``hf_hub_url``, ``HfApi`` and the cache code read at call time are patched too,
    and so is the endpoint of the module-level ``HfApi`` instance behind ``huggingface_hub.model_info``."""
    from huggingface_hub import constants

    home.mkdir(parents=True, exist_ok=True)
    hub_cache = str(home / "hub")
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": hub_cache,
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1" if offline else "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    attrs = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home), "HF_HUB_CACHE": hub_cache, "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": str(home / "assets"), "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": offline, "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for k, v in attrs.items():
        if hasattr(constants, k):
            monkeypatch.setattr(constants, k, v)
    # Libraries that copied a constant at import (``from huggingface_hub.constants import
    # HF_HUB_OFFLINE`` in diffusers' LoRA loader) keep the value the user's environment had:
    # patch every such copy, so the suite is the same under HF_HUB_OFFLINE=1.
    import sys

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("diffusers", "transformers", "huggingface_hub", "peft") and module is not None:
            for k in ("HF_HUB_OFFLINE", "ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
                if k in vars(module) and module is not constants and k in attrs:
                    monkeypatch.setattr(module, k, attrs[k])
    # The module-level HfApi behind huggingface_hub.model_info & co. (used by diffusers) froze its
    # endpoint at import.
    from huggingface_hub import hf_api

    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub(tokens={TOKEN: "write", READ_TOKEN: "read"}, max_seconds=300) as fake:
        _point_client_at(monkeypatch, fake.url, tmp_path / "hf_home")
        yield fake


def _make_lora(path: Path, *, rank: int = 4, metadata: dict | None = None, seed: int = 0,
               shapes: dict[str, tuple[int, int]] | None = None) -> Path:
    """A diffusers/peft-format LoRA written by hand: ``<module>.lora_A.weight`` (r, in) and
    ``<module>.lora_B.weight`` (out, r) for a few U-Net attention projections (``shapes``:
    module -> (in, out) features; 16 -> 16 by default)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m in LORA_MODULES:
        n_in, n_out = (shapes or {}).get(m, (16, 16))
        sd[f"{m}.lora_A.weight"] = torch.randn(rank, n_in, generator=g)
        sd[f"{m}.lora_B.weight"] = torch.randn(n_out, rank, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=metadata)
    return path


def _make_classifier(folder: Path) -> Path:
    folder.mkdir(parents=True)
    config = {"_class_name": mc.CLASSIFIER_CLASS_NAME, "label_column": "group", "num_classes": 3,
              "label_names": ["Animals & Nature", "Food & Drink", "Flags"], "latent_channels": 4,
              "base_model": "emoji"}
    (folder / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(1)
    save_file({"head.weight": torch.randn(3, 8, generator=g), "head.bias": torch.zeros(3)},
              str(folder / "model.safetensors"))
    return folder


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generate(pipe, seed=0):
    return pipe("red apple", seed=seed, num_inference_steps=1, output_type="np").images


# ---------------------------------------------------------------------------- the fixture itself


def test_client_is_pointed_at_the_fake_hub(hub):
    from huggingface_hub import HfApi, hf_hub_url

    assert hf_hub_url("user/x", "f.json").startswith(hub.url + "/user/x/resolve/main/")
    assert HfApi().endpoint == hub.url
    assert lhub._tokens_to_hide(None) == []  # no developer token leaks into the tests


# ---------------------------------------------------------------------------- pipeline round trip


def test_push_pull_pipeline_same_files_same_image_and_offline(hub, tiny_pipeline_dir, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    from latentdiff.io import resolve_model_dir
    from latentdiff.pipelines import TextToImagePipeline

    folder = tmp_path / "pipeline"
    shutil.copytree(tiny_pipeline_dir, folder)
    evals = {"dataset": "emoji", "group_accuracy": {"real": 0.81, "generated": 0.74}, "frechet": 12.5}
    (folder / "eval_results.json").write_text(json.dumps(evals))
    (folder / "training_summary.json").write_text(json.dumps({"steps": 7, "data": {"source": "emoji",
                                                                                   "images": 3120}}))
    shutil.copy(ROOT / "configs" / "tiny.yaml", folder / "training_config.yaml")
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "grid.png")

    result = lhub.push_to_hub(folder, "user/tiny", token=TOKEN, commit_message="tiny model")
    assert result.kind == "pipeline" and result.card_written and result.revision == "main"
    assert f"Bearer {TOKEN}" in hub.auth_headers  # the explicit token was what authenticated
    assert hub.commits[-1]["summary"] == "tiny model"
    assert set(hub.commits[-1]["paths"]) == set(_hashes(folder))  # everything in the folder, README included

    local = _hashes(folder)
    snapshot = resolve_model_dir("user/tiny")  # through latentdiff.io -> download_repo
    assert Path(snapshot).is_relative_to(tmp_path / "hf_home" / "hub")  # the standard cache layout
    assert _hashes(snapshot) == local  # what was pushed is what is pulled back

    card = ModelCard.load(snapshot / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert "latentdiff" in data["tags"] and data["license"] == mc.DEFAULT_LICENSE
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics == {"group_accuracy.real": 0.81, "group_accuracy.generated": 0.74, "frechet": 12.5}
    assert "![samples](grid.png)" in card.text and 'from_pretrained("user/tiny"' in card.text
    assert "StableDiffusionPipeline.from_pretrained" in card.text and "3120" in card.text
    assert TOKEN not in (snapshot / "README.md").read_text()

    reference = _generate(TextToImagePipeline.from_pretrained(folder))
    pulled = TextToImagePipeline.from_pretrained("user/tiny")
    assert np.array_equal(_generate(pulled), reference)

    # Offline: the Hub is gone and HF_HUB_OFFLINE=1; the pipeline loads from the cache alone.
    n_requests = len(hub.requests)
    hub.stop()
    _point_client_at(monkeypatch, f"http://127.0.0.1:{_free_port()}", tmp_path / "hf_home", offline=True)
    offline = TextToImagePipeline.from_pretrained("user/tiny")
    assert np.array_equal(_generate(offline), reference)
    assert len(hub.requests) == n_requests
    # ... and a repo that was never downloaded is a network error that names offline mode.
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        TextToImagePipeline.from_pretrained("user/never-downloaded")


# ---------------------------------------------------------------------------- LoRA and classifier


def test_push_lora_file_card_branch_and_pr(hub, tmp_path):
    from huggingface_hub import ModelCard

    meta = {"base_model": "user/base-model", "instance_prompt": "a sks emoji", "rank": "4", "steps": "300"}
    lora = _make_lora(tmp_path / "runs" / "my_lora.safetensors", metadata=meta)
    assert mc.detect_kind(lora) == "lora"

    result = lhub.push_to_hub(lora, "user/sks-lora", token=TOKEN)
    assert result.kind == "lora"
    assert sorted(result.files) == ["README.md", mc.LORA_WEIGHT_NAME]  # renamed to diffusers' default name
    assert not (lora.parent / "README.md").exists()  # a single file is staged; its folder is left alone

    pulled = lhub.download_repo("user/sks-lora")
    assert hashlib.sha256((pulled / mc.LORA_WEIGHT_NAME).read_bytes()).digest() == \
        hashlib.sha256(lora.read_bytes()).digest()
    data = ModelCard.load(pulled / "README.md").data.to_dict()
    assert {"latentdiff", "lora"} <= set(data["tags"])
    assert data["base_model"] == "user/base-model" and data["instance_prompt"] == "a sks emoji"
    assert data["widget"] == [{"text": "a sks emoji"}]
    text = (pulled / "README.md").read_text()
    assert 'pipe.load_lora_weights("user/sks-lora")' in text and 'pipe.load_lora("user/sks-lora"' in text
    assert "| rank | 4 |" in text  # read from the tensor shapes

    # diffusers' own LoRA loader finds and reads the pushed file by repo id through the Hub client.
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    state_dict, _ = StableDiffusionLoraLoaderMixin.lora_state_dict("user/sks-lora")
    assert set(state_dict) == {f"{m}.lora_{ab}.weight" for m in LORA_MODULES for ab in "AB"}

    # A second version on a branch; main keeps the first; revision= pulls either.
    lora2 = _make_lora(tmp_path / "v2" / mc.LORA_WEIGHT_NAME, metadata=meta, seed=1)
    r2 = lhub.push_to_hub(lora2.parent, "user/sks-lora", token=TOKEN, branch="v2")
    assert r2.revision == "v2" and (lora2.parent / "README.md").exists()
    on_branch = lhub.download_repo("user/sks-lora", revision="v2") / mc.LORA_WEIGHT_NAME
    on_main = lhub.download_repo("user/sks-lora", revision="main") / mc.LORA_WEIGHT_NAME
    assert on_branch.read_bytes() == lora2.read_bytes() and on_main.read_bytes() == lora.read_bytes()

    # A pull request leaves main untouched.
    lora3 = _make_lora(tmp_path / "v3" / mc.LORA_WEIGHT_NAME, metadata=meta, seed=2)
    r3 = lhub.push_to_hub(lora3.parent, "user/sks-lora", token=TOKEN, create_pr=True)
    assert r3.pr_url and "refs/pr/1" in hub.repos["user/sks-lora"].refs
    assert hub.files("user/sks-lora")[mc.LORA_WEIGHT_NAME] == lora.read_bytes()
    assert hub.files("user/sks-lora", "refs/pr/1")[mc.LORA_WEIGHT_NAME] == lora3.read_bytes()


def test_push_classifier_folder_keeps_user_readme(hub, tmp_path):
    from huggingface_hub import ModelCard

    folder = _make_classifier(tmp_path / "cls")
    assert mc.detect_kind(folder) == "classifier"
    # The token from the standard file (what `hf auth login` writes), no token argument.
    (tmp_path / "hf_home" / "token").write_text(TOKEN)
    result = lhub.push_to_hub(folder, "user/emoji-group-classifier")
    assert result.kind == "classifier" and result.card_written
    assert hub.auth_headers == [f"Bearer {TOKEN}"] * len(hub.auth_headers)
    pulled = lhub.download_repo("user/emoji-group-classifier", kind="classifier")
    assert _hashes(pulled) == _hashes(folder)
    card = ModelCard.load(pulled / "README.md")
    assert {"latentdiff", "classifier-guidance"} <= set(card.data.tags)
    assert 'class_label="Animals & Nature"' in card.text and "Food & Drink" in card.text
    assert 'load_classifier("user/emoji-group-classifier")' in card.text

    # A README the user wrote is theirs: kept, and uploaded as is ...
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# My classifier\n")
    result = lhub.push_to_hub(folder, "user/emoji-group-classifier", token=TOKEN)
    assert not result.card_written
    assert hub.files("user/emoji-group-classifier")["README.md"] == (folder / "README.md").read_bytes()
    # ... unless asked.
    assert lhub.push_to_hub(folder, "user/emoji-group-classifier", token=TOKEN, overwrite_card=True).card_written
    assert mc.GENERATED_MARKER in (folder / "README.md").read_text()


def test_real_classifier_pulled_by_repo_id_gives_the_same_logits(hub, tmp_path):
    classifier = pytest.importorskip("latentdiff.classifier")
    config = classifier.ClassifierConfig(sample_size=4, block_out_channels=(8,), norm_num_groups=4,
                                         attention_head_dim=8, num_classes=2, class_names=("a", "b"))
    torch.manual_seed(0)
    model = classifier.NoisyLatentClassifier(config).eval()
    model.save_pretrained(tmp_path / "cls")
    assert lhub.push_to_hub(tmp_path / "cls", "user/cls", token=TOKEN).kind == "classifier"
    pulled = classifier.load_classifier("user/cls")
    x, t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(pulled(x, t), model(x, t))


def test_card_metadata_validates_and_round_trips(tmp_path):
    from huggingface_hub import ModelCard

    lora = _make_lora(tmp_path / "l" / mc.LORA_WEIGHT_NAME, metadata={"instance_prompt": 'say "hi": yes'})
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "l" / "validation_grid.png")
    facts = mc.gather_facts(lora.parent)
    text = mc.make_model_card(facts, "org/name", license="mit")
    card = mc.check_model_card(text, kind="lora", folder=lora.parent)
    assert card.data.to_dict()["widget"] == [{"text": 'say "hi": yes', "output": {"url": "validation_grid.png"}}]
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()
    assert card.data.license == "mit" and "base_model" not in card.data.to_dict()  # no base recorded

    # The checker does reject bad metadata.
    for bad, why in [(text.replace("library_name: diffusers", "library_name: 3"), "library_name"),
                     (text.replace("license: mit", "license: Not A Licence"), "license"),
                     (text.replace("- latentdiff\n", ""), "tags"),
                     (text.replace("url: validation_grid.png", "url: missing.png"), "widget")]:
        with pytest.raises(ValueError, match=why):
            mc.check_model_card(bad, kind="lora", folder=lora.parent)
    with pytest.raises(ValueError, match="parse"):
        mc.check_model_card("---\n- a list\n---\n")


# ---------------------------------------------------------------------------- refusals and errors


def test_pickles_are_refused_and_nothing_is_sent(hub, tmp_path):
    folder = _make_classifier(tmp_path / "run")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match=r"pickle.*checkpoints/optimizer\.bin|checkpoints/optimizer\.bin.*pickle"):
        lhub.push_to_hub(folder, "user/run", token=TOKEN)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="pickle"):
        lhub.push_to_hub(ckpt, "user/run", token=TOKEN)
    assert hub.requests == [] and not (folder / "README.md").exists()


def test_not_found_errors_say_which(hub, tmp_path):
    from latentdiff.pipelines import TextToImagePipeline

    hub.add_repo("user/present", {"config.json": b"{}"})
    with pytest.raises(FileNotFoundError, match="not found"):
        TextToImagePipeline.from_pretrained("user/missing")
    with pytest.raises(FileNotFoundError, match=r"not found.*HTTP 404"):
        lhub.download_repo("user/missing", token=READ_TOKEN)
    with pytest.raises(FileNotFoundError, match="revision not found"):
        lhub.download_repo("user/present", revision="no-such-branch")
    with pytest.raises(FileNotFoundError, match="'weights.safetensors'.*not in the repo"):
        lhub.download_file("user/present", "weights.safetensors")
    assert lhub.download_file("user/present", "config.json").read_bytes() == b"{}"


def test_auth_errors_never_show_the_token(hub, tmp_path, monkeypatch, capfd, caplog):
    from latentdiff import cli

    for name in (None, "huggingface_hub", "latentdiff"):
        caplog.set_level(logging.DEBUG, logger=name)
    folder = _make_classifier(tmp_path / "cls")
    hub.add_repo("user/private", {"config.json": b"{}"}, private=True)

    with pytest.raises(PermissionError, match=r"no token was found \(auth, HTTP 401\)"):
        lhub.push_to_hub(folder, "user/cls")
    with pytest.raises(PermissionError, match=r"rejected the token \(auth, HTTP 401\)") as push_err:
        lhub.push_to_hub(folder, "user/cls", token=BAD_TOKEN)
    assert f"Bearer {BAD_TOKEN}" in hub.auth_headers  # it was sent, and rejected

    monkeypatch.setenv("HF_TOKEN", BAD_TOKEN)  # the standard place, as a user would set it
    with pytest.raises(PermissionError, match=r"auth.*401") as pull_err:
        lhub.download_repo("user/private")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(FileNotFoundError, match=r"private.*\(auth\)") as anon_err:
        lhub.download_repo("user/private")  # anonymous: the Hub cannot say "private" vs "missing"
    assert lhub.download_repo("user/private", token=READ_TOKEN).joinpath("config.json").read_bytes() == b"{}"
    with pytest.raises(PermissionError, match=r"auth.*403"):
        lhub.push_to_hub(folder, "user/private", token=READ_TOKEN)  # a read token cannot write

    # The CLI: token from --token-env; a bad one is a clean error, a good one pushes; neither prints it.
    monkeypatch.setenv("MY_HF_TOKEN", BAD_TOKEN)
    assert cli.main(["push", str(folder), "user/cls", "--token-env", "MY_HF_TOKEN"]) == 2
    bad = capfd.readouterr()
    assert "error:" in bad.err and "auth" in bad.err and BAD_TOKEN not in bad.err + bad.out
    monkeypatch.setenv("MY_HF_TOKEN", TOKEN)
    assert cli.main(["push", str(folder), "user/cls", "--token-env", "MY_HF_TOKEN", "--private"]) == 0
    assert hub.repos["user/cls"].private

    out = capfd.readouterr()  # file-descriptor level: also huggingface_hub's own stderr handler
    assert "pushed classifier to user/cls" in out.out
    texts = [bad.out, bad.err, out.out, out.err, caplog.text, (folder / "README.md").read_text()]
    texts += [str(e.value) + repr(e.value) + repr(e.value.__cause__) + repr(e.value.__context__)
              for e in (push_err, pull_err, anon_err)]
    for token in (TOKEN, READ_TOKEN, BAD_TOKEN):
        assert all(token not in t for t in texts)


def test_unreachable_endpoint_is_a_network_error(tmp_path, monkeypatch):
    _point_client_at(monkeypatch, f"http://127.0.0.1:{_free_port()}", tmp_path / "hf_home")
    with pytest.raises(ConnectionError, match="network"):
        lhub.download_repo("user/anything")
    folder = _make_classifier(tmp_path / "cls")
    with pytest.raises(ConnectionError, match="cannot reach the Hub"):
        lhub.push_to_hub(folder, "user/anything", token=TOKEN)


def test_push_cli_help_and_bad_arguments(tmp_path, capsys, monkeypatch):
    help_text = lhub.push_parser().format_help()
    assert "examples:" in help_text and "--token-env" in help_text and "--branch" in help_text
    with pytest.raises(ValueError, match="NOT_SET_VAR"):
        lhub.push_main([str(tmp_path), "user/x", "--token-env", "NOT_SET_VAR"])
    with pytest.raises(ValueError, match="user/name"):
        lhub.push_to_hub(tmp_path, "not a repo id")
    with pytest.raises(ValueError, match="pipeline folder"):
        lhub.push_to_hub(tmp_path, "user/x")  # an empty folder is none of the three kinds
    with pytest.raises(FileNotFoundError):
        lhub.push_to_hub(tmp_path / "nope", "user/x")


@pytest.mark.slow
def test_diffusers_loads_pushed_pipeline_and_lora_by_repo_id(hub, tiny_pipeline_dir, tmp_path):
    """The card's plain-diffusers snippets, run: ``StableDiffusionPipeline.from_pretrained(repo_id)``
    and ``pipe.load_lora_weights(repo_id)`` through the Hub client."""
    from diffusers import StableDiffusionPipeline

    from latentdiff.pipelines import TextToImagePipeline

    folder = tmp_path / "pipeline"
    shutil.copytree(tiny_pipeline_dir, folder)
    lhub.push_to_hub(folder, "user/tiny", token=TOKEN)
    ours = TextToImagePipeline.from_pretrained(folder)
    pipe = StableDiffusionPipeline.from_pretrained("user/tiny", safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        theirs = getattr(pipe, name).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in getattr(ours, name).state_dict().items())

    shapes = {m: (mod.in_features, mod.out_features) for m in LORA_MODULES
              for mod in [ours.unet.get_submodule(m.removeprefix("unet."))]}
    _make_lora(tmp_path / "lora" / mc.LORA_WEIGHT_NAME, shapes=shapes)
    lhub.push_to_hub(tmp_path / "lora", "user/tiny-lora", token=TOKEN, base_model="user/tiny")
    kwargs = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    before = pipe("red apple", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights("user/tiny-lora")
    after = pipe("red apple", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert not np.allclose(before, after)  # the LoRA was found, loaded and applied
