"""The style section (latentdiff.emoji_eval): the two-style image set, a style head trained by the
evaluator's own trainer that tells Noto from Symbola on real test images, the report on a stand-in
model that draws the asked style, and ``latentdiff eval --sections diversity,style`` end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from stand_ins import ImagePipe, ImageVAE

from latentdiff import emoji_eval as EE
from latentdiff import eval_cli
from latentdiff import evaluation as E


@pytest.fixture(scope="module")
def sets():
    return EE.load_style_set(["symbola", "noto"], "train", 32), EE.load_style_set(["noto", "symbola"], "test", 32)


@pytest.fixture(scope="module")
def style_net(sets):
    torch.set_num_threads(1)
    train, _ = sets
    g = torch.Generator().manual_seed(0)
    pick = torch.cat([torch.randperm(int(n), generator=g)[:300] + off for n, off in  # 300 per style
                      zip(torch.bincount(train.labels["style"]), (0, int((train.labels["style"] == 0).sum())))])
    from latentdiff.train.evaluator import train_evaluator

    return train_evaluator(train.subset(pick.tolist()), epochs=4, batch_size=32, width=8, resolution=16,
                             progress=False)


def test_style_set_labels(sets):
    train, test = sets
    assert train.label_names == test.label_names == {"style": ["noto", "symbola"]}
    noto = E.load_image_set("emoji", "test", 32)
    assert int((test.labels["style"] == 0).sum()) == len(noto) and test.captions[:len(noto)] == noto.captions
    assert torch.equal(test.images[:len(noto)], noto.images)
    assert int((test.labels["style"] == 1).sum()) == len(test) - len(noto) > 0
    with pytest.raises(ValueError, match="at least 2 styles"):
        EE.load_style_set(["noto", "noto"], "test", 32)


def test_style_head_separates_noto_from_symbola(style_net, sets):
    _, test = sets
    pred, _ = E.evaluator_outputs(style_net, test.images)
    for k in (0, 1):
        rows = test.labels["style"] == k
        assert float((pred["style"][rows] == k).float().mean()) > 0.9


def test_report_on_a_model_that_draws_the_asked_style(style_net, sets):
    _, test = sets
    noto = [i for i in range(len(test)) if test.labels["style"][i] == 0]
    symbola = [i for i in range(len(test)) if test.labels["style"][i] == 1]

    def draw(prompt, seed):
        rows = symbola if prompt.endswith(", symbola style") else noto
        return test.images[rows[seed % len(rows)]]

    captions = test.captions[:12]
    r = EE.style_report(ImagePipe(draw), style_net, test, captions, progress=False)
    assert r["real_accuracy"]["noto"] > 0.9 and r["real_accuracy"]["symbola"] > 0.9
    assert r["suffixed"]["symbola"]["judged_as_asked"] > 0.9 and r["suffixed"]["noto"]["judged_as_asked"] > 0.9
    assert r["plain_distribution"]["noto"] > 0.9
    assert r["vae_accuracy"] == r["real_accuracy"]  # this stand-in's VAE is the identity
    text = "\n".join(EE.style_markdown(r))
    assert '"…, symbola style"' in text and "judged symbola" in text and "through the model's VAE" in text


def test_vae_ceiling_drops_when_the_decoder_loses_the_style(style_net, sets):
    """A decoder that draws every image as a blurred grey blob cannot show Symbola's black outline:
    the ceiling row says so, while the real-image row (same judge) stays high."""
    _, test = sets

    def grey_blob(x):
        return torch.nn.functional.avg_pool2d(x, 9, stride=1, padding=4).mean(1, keepdim=True).expand_as(x) * 0.2

    r = EE.style_report(ImagePipe(lambda p, s: test.images[s % len(test)], vae=ImageVAE(grey_blob)), style_net,
                        test, test.captions[:2], progress=False)
    assert min(r["real_accuracy"].values()) > 0.9
    assert r["vae_accuracy_mean"] < 0.75 and min(r["vae_accuracy"].values()) < 0.5


def test_vae_roundtrip_matches_diffusers_forward():
    """vae_roundtrip (images in [0, 1]) against diffusers' own AutoencoderKL forward (D of the
    posterior's mode, i.e. its mean), on a random VAE, batched unevenly."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        sample_size=16).eval()
    u8 = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    got = E.vae_roundtrip(vae, u8.float() / 255, batch_size=2)
    with torch.no_grad():
        ref = (vae(u8.float() / 127.5 - 1, sample_posterior=False).sample / 2 + 0.5).clamp(0, 1)
    assert got.shape == (5, 3, 16, 16) and 0 <= float(got.min()) and float(got.max()) <= 1
    assert torch.allclose(got, ref, atol=1e-5)
    assert not torch.allclose(got, u8.float() / 255, atol=0.05)  # a random VAE is not the identity


def test_eval_cli_diversity_and_style(tmp_path, tiny_pipeline_dir):
    from test_clip_eval import write_folder_dataset

    torch.set_num_threads(1)
    write_folder_dataset(tmp_path / "data")
    out = tmp_path / "r.json"
    base = ["--model", str(tiny_pipeline_dir), "--dataset", str(tmp_path / "data"), "--label-columns", "group",
            "--resolution", "32", "--evaluator", str(tmp_path / "ev"), "--evaluator-epochs", "1",
            "--evaluator-resolution", "16", "--evaluator-width", "8", "--no-progress", "--steps", "2"]
    assert eval_cli.main(base + ["--sections", "diversity,style", "--diversity-prompts", "circle,square",
                          "--diversity-seeds", "3", "--style-limit", "2", "--style-evaluator-epochs", "1",
                          "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [row["word"] for row in r["diversity"]["rows"]] == ["circle", "square"]
    assert r["diversity"]["pixel"]["generated"] > 0 and r["diversity"]["rows"][0]["n_real"] == 18
    assert r["style"]["styles"] == ["noto", "symbola"] and set(r["style"]["suffixed"]) == {"noto", "symbola"}
    assert (tmp_path / "ev-style-noto+symbola" / E.EVALUATOR_META).is_file()
    with pytest.raises(ValueError, match="no colour × object prompts"):
        eval_cli.main(base + ["--sections", "composition"])


class _NegativePipe(ImagePipe):
    """An ImagePipe whose ``draw(prompt, negative, seed)`` also sees the negative prompt."""

    def __call__(self, prompts, *, seed, output_type, negative_prompt=None, **_):
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt] * len(prompts)
        return SimpleNamespace(latents=torch.stack([self.draw(p, n, s) for p, n, s in zip(prompts, negatives, seed)]))


def test_style_negative_plain_and_group_judge(style_net, sets):
    """negative="plain": each suffixed generation gets its own plain caption as the negative prompt
    (this stand-in draws Symbola only then); with ``groups`` and a group head, each variant's group
    accuracy is the head's agreement with ``groups`` on exactly that variant's images."""
    import copy

    _, test = sets
    noto = [i for i in range(len(test)) if test.labels["style"][i] == 0]
    symbola = [i for i in range(len(test)) if test.labels["style"][i] == 1]
    captions = test.captions[:10]

    def draw(prompt, negative, seed):
        asked = prompt.endswith(", symbola style") and negative == prompt.removesuffix(", symbola style")
        rows = symbola if asked else noto
        return test.images[rows[seed % len(rows)]]

    none = EE.style_report(_NegativePipe(draw), style_net, test, captions, progress=False)
    assert none["negative"] == "none" and none["suffixed"]["symbola"]["judged_as_asked"] < 0.1
    assert "group_accuracy" not in none["suffixed"]["noto"]  # no groups given: no group column

    net = copy.deepcopy(style_net)
    torch.manual_seed(0)
    net.heads["group"] = torch.nn.Linear(net.feature_dim, 3)
    groups = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    r = EE.style_report(_NegativePipe(draw), net, test, captions, negative="plain", groups=groups, progress=False)
    assert r["suffixed"]["symbola"]["judged_as_asked"] > 0.9 and r["suffixed"]["noto"]["judged_as_asked"] > 0.9
    for variant, rows in (("noto", noto), ("symbola", symbola)):
        drawn = torch.stack([test.images[rows[s % len(rows)]] for s in range(len(captions))])
        want = float((E.evaluator_outputs(net, drawn)[0]["group"] == groups).float().mean())
        assert r["suffixed"][variant]["group_accuracy"] == pytest.approx(want)
    assert r["plain_group_accuracy"] == pytest.approx(r["suffixed"]["noto"]["group_accuracy"])  # same images
    text = "\n".join(EE.style_markdown(r))
    assert "negative prompt: the plain caption" in text and "group right" in text
    with pytest.raises(ValueError, match="unknown style negative 'other'"):
        EE.style_report(_NegativePipe(draw), style_net, test, captions, negative="other", progress=False)


def test_style_prompt_amplify_is_a_composable_prompt():
    """amplify a: "<caption>, <style> style :1+a AND <caption> :-a", which split_and reads back as the
    two parts and weights, a CLDR name with a colon ("keycap: 9") included."""
    from latentdiff.prompts import split_and

    assert EE.style_prompt("red apple", "twemoji") == "red apple, twemoji style"
    assert EE.style_prompt("red apple", "twemoji", 1.0) == "red apple, twemoji style :2 AND red apple :-1"
    parts = split_and(EE.style_prompt("keycap: 9", "fluent", 0.5))
    assert [(t.strip(), w) for t, w in parts] == [("keycap: 9, fluent style", 1.5), ("keycap: 9", -0.5)]
