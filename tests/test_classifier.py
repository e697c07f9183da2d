"""Classifier guidance: the math against a closed-form classifier, the noise-aware latent classifier,
its files, its errors, its trainer, and every sampler with the guided denoiser.

The analytic case: data from two equal-weight Gaussians N(μ_k, s0² I). At noise level t,
x_t | y=k ~ N(√ᾱ μ_k, v I) with v = ᾱ s0² + 1 - ᾱ, so both the score of p_t(x_t) and the classifier
p(y | x_t) = softmax_k(log N(x_t; √ᾱ μ_k, v I)) are known exactly, with
∇_x log p(y | x_t) = (m_y - Σ_k p(k | x_t) m_k) / v, m_k = √ᾱ μ_k.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from latentdiff.classifier import (
    ClassifierConfig,
    NoisyLatentClassifier,
    load_classifier,
    scale_schedule,
)
from latentdiff.config import ConfigError, load_config
from latentdiff.denoisers import ClassifierGuidance, EpsFunction
from latentdiff.diffusion import alphas_cumprod_at, make_alphas_cumprod, make_timesteps
from latentdiff.samplers import SAMPLERS

ROOT = Path(__file__).resolve().parents[1]
AC = make_alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012)
MU = torch.tensor([[-1.5, 0.0], [1.5, 0.0]], dtype=torch.float64)  # class means μ_k (2-D data)
S0 = 0.5                                                              # class std s0


def _a(t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t).reshape(-1)
    return alphas_cumprod_at(AC, t).to(x.dtype).reshape(-1, 1)  # fractional t too


def mixture_log_joint(x: torch.Tensor, t) -> torch.Tensor:
    """log N(x_t; √ᾱ μ_k, v I) for each class k, (B, K) (the shared normaliser is irrelevant here)."""
    a = _a(t, x)
    v = a * S0**2 + 1 - a
    m = a.sqrt()[:, None, :] * MU[None].to(x.dtype)         # (B or 1, K, D)
    return -((x[:, None, :] - m) ** 2).sum(-1) / (2 * v) - x.shape[1] / 2 * torch.log(v)


def analytic_log_prob(y: int):
    """log p(y | x_t) of the two-Gaussian mixture, a differentiable (B,) function."""
    return lambda x, t: mixture_log_joint(x, t).log_softmax(-1)[:, y]


def analytic_grad(x: torch.Tensor, t, y: int) -> torch.Tensor:
    """∇_x log p(y | x_t) in closed form: (m_y - Σ_k p(k|x) m_k) / v."""
    a = _a(t, x)
    v = a * S0**2 + 1 - a
    m = a.sqrt()[:, None, :] * MU[None].to(x.dtype)          # (B, K, D)
    p = mixture_log_joint(x, t).softmax(-1)                  # (B, K)
    return (m[:, y] - (p[:, :, None] * m).sum(1)) / v


def mixture_eps(x: torch.Tensor, t) -> torch.Tensor:
    """The exact ε of the mixture: ε = -√(1-ᾱ) ∇ log p_t(x) = √(1-ᾱ) Σ_k p(k|x) (x - m_k) / v."""
    a = _a(t, x)
    v = a * S0**2 + 1 - a
    m = a.sqrt()[:, None, :] * MU[None].to(x.dtype)
    p = mixture_log_joint(x, t).softmax(-1)
    return (1 - a).sqrt() * (p[:, :, None] * (x[:, None, :] - m)).sum(1) / v


# ---------------------------------------------------------------------------------------------- the math


@pytest.mark.parametrize("t", [10, 400, 900])
@pytest.mark.parametrize("scale", [1.0, 3.5, "schedule"])
def test_guided_eps_is_eps_minus_s_sigma_grad_exactly(t, scale):
    g = torch.Generator().manual_seed(t)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * 2
    inner = EpsFunction(mixture_eps, AC)
    sched = scale_schedule(4.0, "linear") if scale == "schedule" else scale
    guided = ClassifierGuidance(inner, analytic_log_prob(0), sched)
    tt = torch.full((64,), t)
    s = sched(t) if callable(sched) else sched
    expected = mixture_eps(x, tt) - s * math.sqrt(1 - float(AC[t])) * analytic_grad(x, tt, 0)
    torch.testing.assert_close(guided(x, tt), expected, rtol=1e-12, atol=1e-12)
    # sign: the guided noise estimate points away from class 0, so x̂0 moves toward μ_0
    x0 = (x - math.sqrt(1 - float(AC[t])) * guided(x, tt)) / math.sqrt(float(AC[t]))
    x0_plain = (x - math.sqrt(1 - float(AC[t])) * inner(x, tt)) / math.sqrt(float(AC[t]))
    shift = x0 - x0_plain  # = s (1-ᾱ)/√ᾱ · (1 - p(0|x)) (m_0 - m_1)/v: along μ_0 - μ_1, never away
    assert shift[:, 0].le(0).all() and shift[:, 0].lt(0).any(), "guidance toward class 0 must move x̂0 toward μ_0"
    torch.testing.assert_close(shift[:, 1], torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-12)


def test_scale_zero_and_schedules():
    inner = EpsFunction(mixture_eps, AC)
    x, t = torch.randn(8, 2, dtype=torch.float64), torch.full((8,), 500)
    torch.testing.assert_close(ClassifierGuidance(inner, analytic_log_prob(1), 0.0)(x, t), inner(x, t))
    assert scale_schedule(2.0) == 2.0
    assert scale_schedule(2.0, "linear")(999) == pytest.approx(2.0)
    assert scale_schedule(2.0, "linear")(0) == pytest.approx(2.0 / 1000)
    assert scale_schedule(2.0, "reverse")(0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="constant, linear, reverse"):
        scale_schedule(1.0, "cosine")


def class0_eps(x: torch.Tensor, t) -> torch.Tensor:
    """The exact ε of class 0 alone, N(μ_0, s0² I): √(1-ᾱ) (x - m_0) / v."""
    a = _a(t, x)
    v = a * S0**2 + 1 - a
    return (1 - a).sqrt() * (x - a.sqrt() * MU[0].to(x.dtype)) / v


def _sample(eps_fn, scale: float, n: int = 2000, steps: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    den = EpsFunction(eps_fn, AC)
    if scale:
        den = ClassifierGuidance(den, analytic_log_prob(0), scale)
    return SAMPLERS["ddim"](den, x, make_timesteps(steps, 1000, "trailing"))


def test_guidance_with_the_exact_classifier_samples_the_class_conditional():
    """With s = 1 and exact scores, ∇log p_t(x) + ∇log p(0|x) = ∇log p_t(x|0) (equal priors), so the
    guided sampler must follow *the same trajectories* as the sampler fed the exact class-0 ε.
    Unguided it samples the mixture (half on each side); s = 2 sharpens further toward μ_0."""
    n = 2000
    plain, guided, strong = _sample(mixture_eps, 0.0, n), _sample(mixture_eps, 1.0, n), _sample(mixture_eps, 2.0, n)
    torch.testing.assert_close(guided, _sample(class0_eps, 0.0, n), rtol=1e-9, atol=1e-9)
    assert abs(plain[:, 0].lt(0).double().mean() - 0.5) < 4 * 0.5 / math.sqrt(n)
    p_wrong_side = 0.5 * math.erfc(1.5 / S0 / math.sqrt(2))   # P(N(-1.5, s0²) > 0)
    assert guided[:, 0].gt(0).double().mean() < p_wrong_side + 4 * math.sqrt(p_wrong_side / n) + 1 / n
    assert strong[:, 0].mean() < guided[:, 0].mean(), "a larger scale must push further toward the class"


# ---------------------------------------------------------------------------------------------- the network


def tiny_classifier(**kw) -> NoisyLatentClassifier:
    torch.manual_seed(0)
    cfg = dict(latent_channels=4, sample_size=16, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
               num_classes=3, class_names=("red", "green", "blue"), label_column="colour")
    return NoisyLatentClassifier(ClassifierConfig(**{**cfg, **kw})).eval()


def test_class_by_name_and_index():
    clf = tiny_classifier()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3, 700])
    expected = clf(x, t).log_softmax(-1)[:, 1]
    for label in ("green", 1, "1", "GREEN"):
        torch.testing.assert_close(clf.log_prob_fn(label, 2)(x, t), expected)
    per_image = clf.log_prob_fn(["red", 2], 2)(x, t)
    torch.testing.assert_close(per_image, clf(x, t).log_softmax(-1)[[0, 1], [0, 2]])
    with pytest.raises(ValueError, match="'red', 'green', 'blue'"):
        clf.log_prob_fn("purple", 2)
    with pytest.raises(ValueError, match="out of range.*'red', 'green', 'blue'"):
        clf.log_prob_fn(3, 2)
    with pytest.raises(ValueError, match="needs a class"):
        clf.log_prob_fn(None, 2)
    with pytest.raises(ValueError, match="2 class labels for a batch of 3"):
        clf.log_prob_fn(["red", "blue"], 3)


def test_gradient_reaches_the_latent_only_inside_no_grad():
    clf = tiny_classifier()  # parameters still require grad: guidance must not touch them
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 500])
    den = ClassifierGuidance(EpsFunction(lambda x, t: torch.zeros_like(x), AC), clf.log_prob_fn("blue", 2), 1.0)
    with torch.no_grad():
        out = den(x, t)
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(clf.log_prob_fn("blue", 2)(xg, t).sum(), xg)
    torch.testing.assert_close(out, -math.sqrt(1 - float(AC[500])) * grad)
    assert all(p.grad is None for p in clf.parameters()), "guidance accumulated gradients in the classifier"


def test_save_load_round_trip(tmp_path):
    clf = tiny_classifier()
    clf.save_pretrained(tmp_path / "cls")
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "atomic save left temporary folders"
    loaded = load_classifier(tmp_path / "cls")
    assert loaded.config == clf.config
    x, t = torch.randn(3, 4, 16, 16), torch.tensor([0, 10, 999])
    torch.testing.assert_close(loaded(x, t), clf(x, t), rtol=0, atol=0)
    # a training run's folder is found through its final/ subfolder
    clf.save_pretrained(tmp_path / "run" / "final")
    torch.testing.assert_close(load_classifier(tmp_path / "run")(x, t), clf(x, t), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="no classifier"):
        load_classifier(tmp_path)


def test_wrong_number_of_classes_is_a_clear_error(tmp_path):
    tiny_classifier().save_pretrained(tmp_path / "cls")
    cfg_file = tmp_path / "cls" / "config.json"
    meta = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**meta, "num_classes": 5, "class_names": list("abcde")}))
    with pytest.raises(ValueError, match="does not match config.json"):
        load_classifier(tmp_path / "cls")
    with pytest.raises(ConfigError, match="num_classes=4 but 3 class_names"):
        ClassifierConfig(num_classes=4, class_names=("a", "b", "c")).validate()
    with pytest.raises(ValueError, match="num_classes >= 2"):
        NoisyLatentClassifier(ClassifierConfig(num_classes=0))


# ---------------------------------------------------------------------------------------------- in the pipeline


@pytest.fixture(scope="module")
def tiny_pipe():
    from latentdiff.models import ModelConfig
    from latentdiff.pipelines import TextToImagePipeline

    return TextToImagePipeline.from_config(load_config(ROOT / "configs" / "tiny.yaml", ModelConfig), seed=0)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_accepts_the_guided_denoiser(tiny_pipe, sampler):
    clf = tiny_classifier()
    kw = dict(num_inference_steps=3, sampler=sampler, seed=0, output_type="latent", guidance_scale=1.0)
    plain = tiny_pipe("", **kw).latents
    guided = tiny_pipe("", classifier=clf, class_label="blue", classifier_scale=50.0, **kw).latents
    assert torch.isfinite(guided).all()
    assert not torch.allclose(plain, guided), "classifier guidance had no effect"
    # scale 0 is exactly unguided
    torch.testing.assert_close(tiny_pipe("", classifier=clf, class_label=2, classifier_scale=0.0, **kw).latents, plain)


def test_guidance_composes_with_cfg_and_raises_the_class_log_prob(tiny_pipe):
    clf = tiny_classifier()
    kw = dict(num_inference_steps=3, sampler="ddim", seed=0, output_type="latent", guidance_scale=3.0,
              num_images_per_prompt=2)
    plain = tiny_pipe("red apple", **kw).latents
    guided = tiny_pipe("red apple", classifier=clf, class_label="blue", classifier_scale=200.0, **kw).latents
    lp = clf.log_prob_fn("blue", 2)
    t0 = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        assert lp(guided, t0).mean() > lp(plain, t0).mean(), "guidance toward 'blue' must raise log p(blue | x)"


def test_incompatible_classifier_is_a_clear_error(tiny_pipe):
    kw = dict(num_inference_steps=1, output_type="latent", seed=0)
    with pytest.raises(ValueError, match="3-channel latents.*4 channels"):
        tiny_pipe("", classifier=tiny_classifier(latent_channels=3), class_label=0, classifier_scale=1.0, **kw)
    with pytest.raises(ValueError, match="8×8 latents.*16×16"):
        tiny_pipe("", classifier=tiny_classifier(sample_size=8), class_label=0, classifier_scale=1.0, **kw)
    with pytest.raises(ValueError, match="unknown class 'purple'"):
        tiny_pipe("", classifier=tiny_classifier(), class_label="purple", classifier_scale=1.0, **kw)


# ---------------------------------------------------------------------------------------------- training


def _shade_folder(root, n_per_class: int = 8):
    """train/ and test/ image folders (metadata.jsonl) of three noisy shades: dark, grey, light."""
    import numpy as np
    from PIL import Image

    shades = {"dark": 20, "grey": 128, "light": 235}
    rng = np.random.default_rng(0)
    for split, n in (("train", n_per_class), ("test", 3)):
        (root / split).mkdir(parents=True)
        lines = []
        for name, level in shades.items():
            for i in range(n):
                arr = np.clip(level + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype("uint8")
                Image.fromarray(arr).save(root / split / f"{name}{i}.png")
                lines.append(json.dumps({"file_name": f"{name}{i}.png", "text": f"{name} square", "shade": name}))
        (root / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from latentdiff.cli import main as cli_main
    from latentdiff.data import build_dataset
    from latentdiff.models import ModelConfig
    from latentdiff.pipelines import TextToImagePipeline

    root = tmp_path_factory.mktemp("cls")
    _shade_folder(root / "data")
    # as `latentdiff train vae` does: scaling_factor = 1 / std of the latents, so z has unit variance
    pipe = TextToImagePipeline.from_config(load_config(ROOT / "configs" / "tiny.yaml", ModelConfig), seed=0)
    pixels = torch.stack([it["pixel_values"] for it in build_dataset(str(root / "data"), resolution=32)])
    with torch.no_grad():
        std = pipe.vae.encode(pixels).latent_dist.mean.std()
    pipe.vae.register_to_config(scaling_factor=float(1 / std))
    pipe.save_pretrained(root / "pipe")
    argv = ["train", "classifier", "--config", str(ROOT / "configs" / "tiny_classifier.yaml"), "--vae-from", str(root / "pipe"),
            "--dataset", str(root / "data"), "--label-column", "shade", "--output-dir", str(root / "run"),
            "--max-train-steps", "30", "--device", "cpu", "--set", "checkpointing_steps=15",
            "--set", "checkpoints_total_limit=2",
            "--set", "validation_steps=0",
            # an untrained VAE's posterior std is ~1, which would drown the shades: train on z = μ
            "--set", "data.posterior=mode"]
    assert cli_main(argv) == 0
    return root, argv


def test_training_lowers_the_loss_and_writes_its_report(trained_run):
    from safetensors.torch import load_file

    from latentdiff.train.classifier import accuracy_vs_t

    root, _ = trained_run
    run = root / "run"
    for name in ("final/config.json", "final/model.safetensors", "final/accuracy_vs_t.md", "final/accuracy_vs_t.png",
                 "final/accuracy_vs_t.json", "final/training_summary.json", "config.yaml"):
        assert (run / name).is_file(), name
    assert list((run / "logs").iterdir()), "no TensorBoard events"
    clf = load_classifier(run)
    assert clf.config.class_names == ("dark", "grey", "light") and clf.config.label_column == "shade"
    assert (clf.config.latent_channels, clf.config.sample_size) == (4, 16)
    (cache_file,) = (run / "cache").glob("latents-shade-*.safetensors")
    cache = load_file(str(cache_file))
    fresh = NoisyLatentClassifier(clf.config)
    args = (cache["train_mean"], cache["train_std"], cache["train_labels"], clf.alphas_cumprod(), (0, 100))
    before = accuracy_vs_t(fresh, *args, noise_draws=2, posterior="mode")
    after = accuracy_vs_t(clf, *args, noise_draws=2, posterior="mode")
    assert sum(r["loss"] for r in after) < sum(r["loss"] for r in before), (before, after)


def test_resume_reproduces_the_uninterrupted_run(trained_run, tmp_path):
    import shutil

    from latentdiff.cli import main as cli_main

    root, argv = trained_run
    # resume a copy of the run from its step-15 checkpoint
    shutil.copytree(root / "run" / "checkpoints" / "checkpoint-15", tmp_path / "run" / "checkpoints" / "checkpoint-15")
    argv = [a if a != str(root / "run") else str(tmp_path / "run") for a in argv] + ["--resume", "latest"]
    assert cli_main(argv) == 0
    summary = json.loads((tmp_path / "run" / "final" / "training_summary.json").read_text())
    assert (summary["start_step"], summary["steps"]) == (15, 30)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([0, 500])
    torch.testing.assert_close(load_classifier(tmp_path / "run")(x, t), load_classifier(root / "run")(x, t))


def test_generate_cli_with_a_trained_classifier(trained_run, tmp_path):
    from PIL import Image

    from latentdiff.cli import PNG_KEY
    from latentdiff.cli import main as cli_main

    root, _ = trained_run
    argv = ["generate", "", "--model", str(root / "pipe"), "--classifier", str(root / "run"), "--class", "grey",
            "--classifier-scale", "2", "--steps", "2", "--seed", "0", "--out", str(tmp_path)]
    assert cli_main(argv) == 0
    (png,) = tmp_path.glob("*.png")
    params = json.loads(Image.open(png).text[PNG_KEY])
    assert params["class_label"] == "grey" and params["classifier_scale"] == 2.0
    assert cli_main(argv + ["--class", "purple", "--steps", "1"]) == 2  # a clear error, not a traceback
