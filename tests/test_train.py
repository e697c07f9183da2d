"""Training: exact resume after SIGKILL, atomic checkpoints, 2-process equivalence, learning on the
emoji set (VAE PSNR, U-Net held-out loss), cache keys, strict configs.

Everything runs the tiny configs on CPU with one thread per process (on a shared, loaded machine
that is several times faster than competing OpenMP threads).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentdiff.config import ConfigError, load_config
from latentdiff.models import ModelConfig
from latentdiff.train.common import (
    ImageData,
    cache_key,
    hash_module,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from latentdiff.train.unet import (
    UNetTrainConfig,
    batch_inputs,
    cache_parts,
    caption_table,
    heldout_loss,
    make_heldout_batch,
    prepare_data,
    tokenize,
)
from latentdiff.train.unet import train as train_unet
from latentdiff.train.vae import VAETrainConfig, heldout_psnr
from latentdiff.train.vae import train as train_vae

ROOT = Path(__file__).resolve().parents[1]
TINY_VAE = ROOT / "configs" / "tiny_vae.yaml"
TINY_UNET = ROOT / "configs" / "tiny_unet.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


BASE = {"data.max_samples": 32, "data.validation_split": "", "optim.batch_size": 8, "validation_steps": 0,
        "log_every": 2}


def unet_cfg(out: Path, **overrides) -> UNetTrainConfig:
    """The tiny U-Net config as tests run it in-process (same settings as :func:`cli_args`)."""
    base = {"output_dir": str(out), "device": "cpu", "cpu_threads": 1, **BASE}
    return load_config(TINY_UNET, UNetTrainConfig, {**base, **overrides})


def cli_args(out: Path, **overrides) -> list[str]:
    """The same config as :func:`unet_cfg`, as command-line flags for a subprocess."""
    args = ["--config", str(TINY_UNET), "--output-dir", str(out), "--device", "cpu", "--num-threads", "1"]
    for k, v in {**BASE, **overrides}.items():
        args += ["--set", f"{k}={v}"]
    return args


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ----------------------------------------------------------------------------------------------
# Resume and atomic checkpoints
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now (the OS picks it), instead of guessing from the pid."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_same_training_state(ref: Path, res: Path, step: int) -> None:
    """Bit-identical weights, optimizer state and EMA export: resume is exact, not approximately so."""
    a, b = ref / f"checkpoints/checkpoint-{step}", res / f"checkpoints/checkpoint-{step}"
    wa, wb = weights(a / "model.safetensors"), weights(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), \
        f"weights differ after resume: max |Δ| {max_abs_diff(wa, wb):.3e}"
    oa, ob = (torch.load(c / "optimizer.bin", weights_only=True)["state"] for c in (a, b))
    assert oa.keys() == ob.keys() and all(
        torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i]), "optimizer state differs after resume"
    ea, eb = (weights(r / "final/unet/diffusion_pytorch_model.safetensors") for r in (ref, res))
    assert all(torch.equal(ea[k], eb[k]) for k in ea), f"EMA export differs: max |Δ| {max_abs_diff(ea, eb):.3e}"


RESUME = {"optim.max_train_steps": 22, "checkpointing_steps": 4, "checkpoints_total_limit": 0}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run of the resume tests, in-process, with a shared latent cache."""
    root = tmp_path_factory.mktemp("resume")
    over = {**RESUME, "cache_dir": str(root / "cache")}
    train_unet(unet_cfg(root / "ref", **over))
    return root, over


def resume_and_compare(out: Path, over: dict, ref: Path) -> None:
    steps = over["optim.max_train_steps"]
    summary = train_unet(unet_cfg(out, **over), resume="latest")
    assert summary["steps"] == steps
    assert_same_training_state(ref, out, steps)
    # and training did move the weights (the comparison is not vacuous)
    first = weights(ref / f"checkpoints/checkpoint-{over['checkpointing_steps']}/model.safetensors")
    assert max_abs_diff(first, weights(ref / f"checkpoints/checkpoint-{steps}/model.safetensors")) > 1e-4


def test_resume_after_sigkill_matches_uninterrupted_run(uninterrupted, tmp_path):
    root, over = uninterrupted
    steps = over["optim.max_train_steps"]
    # the same run in a subprocess, SIGKILLed at a random (seeded, printed) moment after its first checkpoint
    seed = int.from_bytes(os.urandom(4), "little")
    delay = random.Random(seed).uniform(0.0, 0.3)
    print(f"kill delay {delay:.3f} s after the first checkpoint (seed {seed}; reproduce with this delay)")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "latentdiff.cli", "train", "unet", *cli_args(out, **over)]
    with open(tmp_path / "child.stderr", "w+") as err:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + 240
            while not list_checkpoints(out) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(delay)  # kill at a random step (possibly mid-save)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        err.seek(0)
        child_log = err.read()[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed (rc {proc.returncode}):\n{child_log}"
    assert not (out / "final").exists()
    done = list_checkpoints(out)
    assert done and done[-1][0] < steps, child_log
    print(f"killed after checkpoint {done[-1][0]}")
    resume_and_compare(out, over, root / "ref")


KILL_IN_SAVE = """
import os, signal, sys
import latentdiff.train.common as common
save_config = common.save_config
def save_config_then_die(cfg, path):  # inside save_checkpoint: state saved to the temp folder, not renamed yet
    if ".tmp-checkpoint-{step}" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return save_config(cfg, path)
common.save_config = save_config_then_die
from latentdiff.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_inside_save_checkpoint_resumes_from_the_previous_one(uninterrupted, tmp_path):
    """A deterministic kill in the middle of writing checkpoint 8 (after accelerate wrote its files,
    before the rename): checkpoint 4 is the newest complete one, and the resumed run is bit-exact."""
    root, over = uninterrupted
    out = tmp_path / "killed"
    res = subprocess.run([sys.executable, "-c", KILL_IN_SAVE.format(step=8), "train", "unet",
                          *cli_args(out, **over)], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert (out / "checkpoints" / ".tmp-checkpoint-8" / "model.safetensors").is_file(), "killed mid-save"
    assert [s for s, _ in list_checkpoints(out)] == [4]
    assert resolve_resume(out, "latest") == out / "checkpoints" / "checkpoint-4"
    resume_and_compare(out, over, root / "ref")
    assert not (out / "checkpoints" / ".tmp-checkpoint-8").exists()


def test_failed_save_leaves_previous_checkpoint_usable(tmp_path):
    from accelerate import Accelerator

    out = tmp_path / "run"
    cfg = unet_cfg(out, **{"optim.max_train_steps": 4, "checkpointing_steps": 2, "checkpoints_total_limit": 2})
    train_unet(cfg)
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]

    accelerator = Accelerator(cpu=True)

    def crashing_save_state(output_dir, **_):  # partial files, then a crash mid-save
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"\x00" * 100)
        raise RuntimeError("simulated crash during save")

    accelerator.save_state = crashing_save_state
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(accelerator, out, 6, cfg, {"loss": 0.0}, keep=2)
    assert not (out / "checkpoints" / ".tmp-checkpoint-6").exists()  # an error we see removes the partial write
    with pytest.raises(RuntimeError):
        crashing_save_state(out / "checkpoints" / ".tmp-checkpoint-6")  # the partial write a SIGKILL leaves...
    assert resolve_resume(out, "latest") == out / "checkpoints" / "checkpoint-4"  # ...is ignored
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(out, str(out / "checkpoints" / ".tmp-checkpoint-6"))
    # the previous checkpoint resumes and training continues; the stale temp folder is cleaned up
    summary = train_unet(unet_cfg(out, **{"optim.max_train_steps": 6, "checkpointing_steps": 2,
                                          "checkpoints_total_limit": 2}), resume="latest")
    assert summary["steps"] == 6
    assert [s for s, _ in list_checkpoints(out)] == [4, 6]
    assert not (out / "checkpoints" / ".tmp-checkpoint-6").exists()
    state = json.loads((out / "checkpoints/checkpoint-6/trainer_state.json").read_text())
    assert state["step"] == 6 and (out / "checkpoints/checkpoint-6/config.yaml").is_file()


def grad_norm(run: Path, step: int) -> float:
    """The pre-clipping gradient norm of ``step`` (trainer_state.json): AdamW and clipping are blind to
    a constant gradient scale, so equal weights alone would not catch a 2x accumulation bug."""
    return json.loads((run / f"checkpoints/checkpoint-{step}/trainer_state.json").read_text())["grad_norm"]


def test_gradient_accumulation_matches_larger_batch(tmp_path):
    """Batch 8 in one step == batch 4 twice accumulated: the global batch is sliced, not re-drawn,
    and the accumulated gradient is the mean, not the sum."""
    common = {"optim.max_train_steps": 3, "checkpointing_steps": 1, "checkpoints_total_limit": 0,
              "cache_dir": str(tmp_path / "cache")}
    train_unet(unet_cfg(tmp_path / "a", **common, **{"optim.batch_size": 8}))
    train_unet(unet_cfg(tmp_path / "b", **common, **{"optim.batch_size": 4, "optim.gradient_accumulation_steps": 2}))
    d = max_abs_diff(weights(tmp_path / "a/checkpoints/checkpoint-3/model.safetensors"),
                     weights(tmp_path / "b/checkpoints/checkpoint-3/model.safetensors"))
    assert d <= 1e-5, d
    for step in (1, 3):
        ga, gb = grad_norm(tmp_path / "a", step), grad_norm(tmp_path / "b", step)
        assert ga > 0 and abs(ga - gb) <= 1e-4 * ga, (step, ga, gb)


# ----------------------------------------------------------------------------------------------
# Scale-out: 2 processes (gloo) == 1 process with the same global batch
# ----------------------------------------------------------------------------------------------


def test_two_process_run_matches_one_process(tmp_path):
    steps = 4
    common = {"optim.max_train_steps": steps, "checkpointing_steps": 1, "checkpoints_total_limit": 0,
              "cache_dir": str(tmp_path / "cache")}
    train_unet(unet_cfg(tmp_path / "one", **common, **{"optim.batch_size": 8}))
    # `--multi_gpu` makes accelerate start torchrun; with --device cpu the processes use gloo
    # (`accelerate launch --cpu --num_processes N` starts the N processes only through mpirun).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           "-m", "latentdiff.train.unet", *cli_args(tmp_path / "two", **common, **{"optim.batch_size": 4})]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = tmp_path / f"two/checkpoints/checkpoint-{steps}"
    assert (ckpt / "random_states_1.pkl").is_file(), "the launcher did not start 2 processes"
    summary = json.loads((tmp_path / "two/final/training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 8
    one = weights(tmp_path / f"one/checkpoints/checkpoint-{steps}/model.safetensors")
    d = max_abs_diff(one, weights(ckpt / "model.safetensors"))
    print(f"1 vs 2 processes after {steps} steps: max |Δ| = {d:.2e}")
    assert d <= 1e-5  # fp32 all-reduce sums the two half-batch gradients in another order
    g1, g2 = grad_norm(tmp_path / "one", 1), grad_norm(tmp_path / "two", 1)
    assert g1 > 0 and abs(g1 - g2) <= 1e-4 * g1, (g1, g2)  # the all-reduce averages, it does not sum


# ----------------------------------------------------------------------------------------------
# Learning on the emoji set
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    cfg = load_config(TINY_VAE, VAETrainConfig, {
        "output_dir": str(out), "device": "cpu", "cpu_threads": 1, "data.max_samples": 256,
        "data.max_validation_samples": 64, "optim.max_train_steps": 60, "checkpointing_steps": 0,
        "validation_steps": 60})
    summary = train_vae(cfg)
    return out, cfg, summary


def test_vae_reconstructs_heldout_emoji_better_than_init(trained_vae):
    from diffusers import AutoencoderKL

    from latentdiff.train.common import load_image_data

    out, cfg, summary = trained_vae
    mc = load_config(cfg.model, ModelConfig)
    torch.manual_seed(cfg.seed)
    init = mc.vae.build(mc.resolution).eval()
    heldout = load_image_data(cfg.data, "test", mc.resolution)
    vae = AutoencoderKL.from_pretrained(out / "vae")
    before, after = heldout_psnr(init, heldout.images, 64, "cpu"), heldout_psnr(vae, heldout.images, 64, "cpu")
    print(f"tiny VAE held-out PSNR: init {before:.2f} dB -> {after:.2f} dB after {summary['steps']} steps")
    assert after > before + 3.0
    assert abs(after - summary["heldout_psnr_db"]) < 1e-3
    # the scaling factor was measured and stored: unit variance of scaled posterior samples
    sf = vae.config.scaling_factor
    assert sf != 1.0 and abs(sf - summary["scaling_factor"]) < 1e-9
    from latentdiff.train.vae import encode_stats

    mean, std = encode_stats(vae, load_image_data(cfg.data, "train", mc.resolution).images, 64, "cpu")
    z = (mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))) * sf
    assert abs(float(z.std()) - 1.0) < 0.05
    assert list((out / "validation").glob("step-*.png"))


def test_vae_decoder_only_keeps_the_latent_space(trained_vae, tmp_path):
    """train_decoder_only on another style (Symbola line art): encoder, quant_conv and scaling factor
    are bitwise the init's (a U-Net trained on those latents still fits), the decoder learnt the style."""
    from diffusers import AutoencoderKL

    from latentdiff.train.common import load_image_data

    vae_out, _, _ = trained_vae
    over = {"output_dir": str(tmp_path / "dec"), "device": "cpu", "cpu_threads": 1, "model": "",
            "init_from": str(vae_out / "vae"), "train_decoder_only": True, "data.source": "emoji:symbola",
            "data.max_samples": 128, "data.max_validation_samples": 32, "optim.max_train_steps": 30,
            "checkpointing_steps": 0, "validation_steps": 0}
    cfg = load_config(TINY_VAE, VAETrainConfig, over)
    summary = train_vae(cfg)
    init, new = AutoencoderKL.from_pretrained(vae_out / "vae"), AutoencoderKL.from_pretrained(tmp_path / "dec" / "vae")
    a, b = init.state_dict(), new.state_dict()
    frozen = [k for k in a if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert new.config.scaling_factor == init.config.scaling_factor == summary["scaling_factor"]
    heldout = load_image_data(cfg.data, "test", 32)
    before, after = heldout_psnr(init, heldout.images, 64, "cpu"), heldout_psnr(new, heldout.images, 64, "cpu")
    assert after > before + 0.5, (before, after)
    with pytest.raises(ValueError, match="train_decoder_only needs init_from"):
        load_config(TINY_VAE, VAETrainConfig, {**over, "init_from": "", "model": "tiny.yaml"}).validate()


def test_unet_training_lowers_heldout_loss_and_exports_pipeline(trained_vae, tmp_path):
    vae_out, _, _ = trained_vae
    out = tmp_path / "unet"
    cfg = load_config(TINY_UNET, UNetTrainConfig, {
        "output_dir": str(out), "device": "cpu", "cpu_threads": 1, "vae_from": str(vae_out / "vae"),
        "data.max_samples": 256, "data.max_validation_samples": 64, "optim.max_train_steps": 60,
        "optim.batch_size": 16, "checkpointing_steps": 0, "validation_steps": 60,
        "validation_num_inference_steps": 2})
    summary = train_unet(cfg)
    before, after = summary["heldout_loss_initial"], summary["heldout_loss_final_ema"]
    print(f"tiny U-Net held-out loss (fixed t, eps): {before:.4f} -> {after:.4f} after {summary['steps']} steps")
    assert after < 0.8 * before

    # the exported folder loads in our pipeline (and gives the same held-out loss) and in diffusers
    from diffusers import StableDiffusionPipeline

    from latentdiff.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(out / "final")
    assert pipe("red apple", seed=0, num_inference_steps=2).images[0].size == (32, 32)
    from latentdiff.train.common import load_image_data

    val = load_image_data(cfg.data, "test", 32)
    cache = {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer}
    comps = type("C", (), cache)
    enc = prepare_data(val, comps, cfg, _FakeAccelerator(), out / "cache", flips=False)
    batch = make_heldout_batch(enc, pipe.vae.config.scaling_factor, 1000, cfg.seed)
    again = heldout_loss(pipe.unet, batch, pipe.alphas_cumprod, "epsilon", cfg.min_snr_gamma)
    assert abs(again - after) < 1e-4
    sd = StableDiffusionPipeline.from_pretrained(out / "final", safety_checker=None)
    assert sd.unet.config.sample_size == pipe.unet.config.sample_size
    assert (out / "final/training_summary.json").is_file() and list((out / "validation").glob("step-*.png"))


class _FakeAccelerator:
    device = torch.device("cpu")
    is_main_process = is_local_main_process = True

    def wait_for_everyone(self):
        pass


# ----------------------------------------------------------------------------------------------
# Cache keys and the cached step
# ----------------------------------------------------------------------------------------------


def _tiny_models():
    from latentdiff.tokenizer import build_clip_tokenizer

    mc = load_config(TINY_UNET.parent / "tiny.yaml", ModelConfig)
    torch.manual_seed(0)
    return mc.vae.build(32).eval(), mc.text_encoder.build().eval(), build_clip_tokenizer()


def test_cache_key_changes_with_vae_weights_and_data():
    vae, te, tok = _tiny_models()
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g),
                     ["red apple", "dog face", "red apple", "sun", "", "pizza"], "test", "train")
    table, _ = caption_table(data.captions)
    ids = tokenize(tok, table)

    def key(d=data, v=vae, flips=False):
        return cache_key(cache_parts(d, v, te, ids, flips, True))

    k0 = key()
    assert key() == k0  # deterministic
    v2, _, _ = _tiny_models()
    assert hash_module(v2) == hash_module(vae) and key(v=v2) == k0
    with torch.no_grad():
        next(v2.parameters()).view(-1)[0] += 1e-3
    assert key(v=v2) != k0  # other VAE weights
    pix = data.images.clone()
    pix[0, 0, 0, 0] ^= 1
    assert key(d=ImageData(pix, data.captions, "test", "train")) != k0  # one pixel changed
    caps = list(data.captions)
    caps[1] = "cat face"
    assert key(d=ImageData(data.images, caps, "test", "train")) != k0  # one caption changed
    assert key(flips=True) != k0  # other transforms


def test_stale_cache_is_not_used(tmp_path):
    vae, te, tok = _tiny_models()
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g),
                     ["a", "b", "c", "d"], "test", "train")
    cfg = unet_cfg(tmp_path)
    comps = type("C", (), {"vae": vae, "text_encoder": te, "tokenizer": tok})
    enc1 = prepare_data(data, comps, cfg, _FakeAccelerator(), tmp_path, flips=False)
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(1.1)
    enc2 = prepare_data(data, comps, cfg, _FakeAccelerator(), tmp_path, flips=False)
    assert enc1.key != enc2.key and len(list(tmp_path.glob("train-*.safetensors"))) == 2
    assert not torch.allclose(enc1.mean, enc2.mean)
    # the second encoding equals a fresh one with the changed VAE (it was not read from the stale file)
    fresh = vae.encode(data.images.float() / 127.5 - 1).latent_dist.mean
    torch.testing.assert_close(enc2.mean[0], fresh, atol=1e-5, rtol=1e-5)


def test_cached_step_inputs_equal_encoding_every_step(tmp_path):
    """Cached μ/σ + embeddings give the same z and conditioning as encoding through the VAE and
    text encoder each step (diffusers' train_text_to_image path), flips and dropout included."""
    vae, te, tok = _tiny_models()
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g),
                     ["red apple", "dog face", "red apple", "sun", "moon", "pizza"], "test", "train")
    comps = type("C", (), {"vae": vae, "text_encoder": te, "tokenizer": tok})
    cached = prepare_data(data, comps, unet_cfg(tmp_path), _FakeAccelerator(), tmp_path, flips=True)
    raw = prepare_data(data, comps, unet_cfg(tmp_path, cache=False), _FakeAccelerator(), tmp_path, flips=True)
    assert cached.mean is not None and raw.mean is None
    idx = torch.tensor([5, 0, 2, 2])
    flip = torch.tensor([True, False, True, False])
    drop = torch.tensor([False, True, False, False])
    noise = torch.randn(4, 4, 16, 16, generator=g)
    z1, e1 = batch_inputs(cached, vae, te, idx, flip, drop, noise, 0.5)
    with torch.no_grad():
        z2, e2 = batch_inputs(raw, vae, te, idx, flip, drop, noise, 0.5)
    torch.testing.assert_close(z1, z2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e1, e2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z1[2], z1[3])  # the mirrored image has other latents
    uncond = te(tokenize(tok, [""]))[0][0]
    torch.testing.assert_close(e1[1], uncond, atol=1e-5, rtol=1e-5)  # dropped caption -> ""


# ----------------------------------------------------------------------------------------------
# Bad configs fail before training
# ----------------------------------------------------------------------------------------------


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_unknown_key_is_an_error(tmp_path):
    from latentdiff.train.unet import main

    p = _write(tmp_path, TINY_UNET.read_text() + "learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="Unknown config key.*learning_rate"):
        main(["--config", str(p), "--output-dir", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="optim.learnig_rate"):
        main(["--config", str(TINY_UNET), "--output-dir", str(tmp_path / "o"), "--set", "optim.learnig_rate=1"])
    assert not (tmp_path / "o").exists()


def test_wrong_type_is_an_error(tmp_path):
    from latentdiff.train.vae import main

    p = _write(tmp_path, TINY_VAE.read_text().replace("batch_size: 16", "batch_size: sixteen"))
    with pytest.raises(ConfigError, match="optim.batch_size.*integer"):
        main(["--config", str(p), "--output-dir", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="mixed_precision"):
        main(["--config", str(TINY_VAE), "--output-dir", str(tmp_path / "o"), "--set", "mixed_precision=fp8"])
    assert not (tmp_path / "o").exists()


def test_missing_data_source_and_model_are_errors(tmp_path):
    from latentdiff.train.unet import main

    with pytest.raises(ValueError, match="data.source is empty"):
        main(["--config", str(TINY_UNET), "--output-dir", str(tmp_path / "o"), "--set", "data.source="])
    with pytest.raises(ValueError, match="exactly one of `model`"):
        main(["--config", str(TINY_UNET), "--output-dir", str(tmp_path / "o"), "--set", "model="])
    with pytest.raises(ValueError, match="vae_from is empty"):
        main(["--config", str(TINY_UNET), "--output-dir", str(tmp_path / "o"), "--set", "vae_from="])
    with pytest.raises(FileNotFoundError, match="vae_from"):
        main(["--config", str(TINY_UNET), "--output-dir", str(tmp_path / "o"), "--set", "vae_from=/nonexistent"])
    with pytest.raises(ValueError, match="split 'validation' not in emoji"):
        main(["--config", str(TINY_UNET), "--output-dir", str(tmp_path / "o"), "--set", "data.split=validation"])
    assert not (tmp_path / "o").exists()
    # through the CLI: a one-line error and exit status 2, no traceback
    res = subprocess.run([sys.executable, "-m", "latentdiff.cli", "train", "unet", "--config", str(TINY_UNET),
                          "--set", "data.source="], env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "data.source is empty" in res.stderr and "Traceback" not in res.stderr


def test_vae_discriminator_option_trains(tmp_path):
    cfg = load_config(TINY_VAE, VAETrainConfig, {
        "output_dir": str(tmp_path), "device": "cpu", "cpu_threads": 1, "data.max_samples": 16,
        "data.validation_split": "", "optim.batch_size": 4, "optim.max_train_steps": 3, "checkpointing_steps": 3,
        "discriminator.enabled": True, "discriminator.start_step": 1, "discriminator.channels": 8,
        "discriminator.layers": 2, "random_crop": 16})
    summary = train_vae(cfg)
    assert summary["steps"] == 3 and summary["final_loss"] == summary["final_loss"]  # finite, not NaN
    assert (tmp_path / "vae/diffusion_pytorch_model.safetensors").is_file()
    assert "model_1.safetensors" in {p.name for p in (tmp_path / "checkpoints/checkpoint-3").iterdir()}


# ----------------------------------------------------------------------------------------------
# v-prediction with zero terminal SNR; loss options
# ----------------------------------------------------------------------------------------------


def test_vpred_zero_snr_model_trains_exports_and_samples_like_diffusers(tmp_path):
    """`prediction_type: v_prediction` + `zero_terminal_snr: true`: the loss stays finite (min-SNR
    weight 0 at SNR = 0), the exported scheduler config says rescaled betas, trailing spacing and v,
    and diffusers' Euler on that config gives our Euler image (both sample from ᾱ_{T-1} = 2⁻²⁴); DDIM
    too, up to its first step from ᾱ = 0 exactly (ours: 2⁻²⁴), as test_pipeline_samplers says."""
    import numpy as np
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    from latentdiff.pipelines import TextToImagePipeline

    out = tmp_path / "vpred"
    summary = train_unet(unet_cfg(out, **{"optim.max_train_steps": 6, "checkpointing_steps": 0,
                                          "prediction_type": "v_prediction", "zero_terminal_snr": True}))
    assert summary["prediction_type"] == "v_prediction" and summary["zero_terminal_snr"] is True
    assert summary["final_loss"] == summary["final_loss"]  # not NaN
    sched = json.loads((out / "final/scheduler/scheduler_config.json").read_text())
    assert sched["rescale_betas_zero_snr"] is True and sched["timestep_spacing"] == "trailing"
    assert sched["prediction_type"] == "v_prediction"

    ours = TextToImagePipeline.from_pretrained(out / "final")
    assert float(ours.scheduler_config.alphas_cumprod()[-1]) == 0.0
    kw = dict(num_inference_steps=6, guidance_scale=3.0, output_type="np")
    sd = StableDiffusionPipeline.from_pretrained(out / "final", safety_checker=None)
    for sampler, cls, tol in (("euler", EulerDiscreteScheduler, 1e-4), ("ddim", DDIMScheduler, 5e-3)):
        mine = ours(["red apple", "cat face"], seed=[0, 1], sampler=sampler, **kw).images
        sd.scheduler = cls.from_config(sd.scheduler.config)
        theirs = sd(["red apple", "cat face"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).images
        assert np.isfinite(mine).all() and np.abs(theirs - mine).max() <= tol, (sampler, np.abs(theirs - mine).max())


def test_epsilon_with_zero_terminal_snr_is_refused(tmp_path):
    with pytest.raises(ValueError, match="zero_terminal_snr: true needs prediction_type: v_prediction"):
        unet_cfg(tmp_path / "x", zero_terminal_snr=True)


def test_huber_and_debiased_loss_options():
    """Pseudo-Huber √(d² + c²) − c and sd-scripts' debiased weights 1/√SNR (ε), 1/(SNR+1) (v), SNR ≤ 1000."""
    from latentdiff.diffusion import make_alphas_cumprod, q_sample, snr, training_target
    from latentdiff.train.unet import diffusion_loss

    ac = make_alphas_cumprod()
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    out = torch.randn(4, 4, 8, 8, generator=g)

    class Fixed(torch.nn.Module):  # a "U-Net" that returns a fixed prediction
        def forward(self, x, t, encoder_hidden_states=None):
            return type("O", (), {"sample": out})

    for pred_type in ("epsilon", "v_prediction"):
        target = training_target(z0, eps, t, ac, pred_type)
        d = out - target
        huber = (torch.sqrt(d ** 2 + 0.05 ** 2) - 0.05).flatten(1).mean(1)
        got = diffusion_loss(Fixed(), z0, None, t, eps, ac, pred_type, 0.0, loss_type="huber", huber_c=0.05)
        assert torch.allclose(got, huber.mean(), rtol=1e-6)
        s = snr(ac, t).clamp(max=1000.0)
        w = 1 / (s + 1) if pred_type == "v_prediction" else s.rsqrt()
        got = diffusion_loss(Fixed(), z0, None, t, eps, ac, pred_type, 0.0, debiased=True)
        assert torch.allclose(got, ((d ** 2).flatten(1).mean(1) * w.float()).mean(), rtol=1e-6)
    assert q_sample is not None


def test_trained_text_encoder_keeps_cached_latents_its_own_lr_and_exports_its_ema(tmp_path):
    """`train_text_encoder: true`: the latents still come from the cache (only the captions are
    encoded every step), `text_encoder_learning_rate` is the tower's param group, and the export pairs
    the EMA U-Net with the EMA text tower, not with the raw tower of the last checkpoint."""
    out = tmp_path / "te"
    train_unet(unet_cfg(out, **{"optim.max_train_steps": 4, "checkpointing_steps": 4, "train_text_encoder": True,
                                "text_encoder_learning_rate": 3e-3}))
    cached = list((out / "cache").glob("train-*.safetensors"))
    assert cached, "latents not cached"
    assert "mean" in weights(cached[0]) and "text_embeddings" not in weights(cached[0])  # the tower's job now
    ckpt = out / "checkpoints" / "checkpoint-4"
    groups = torch.load(ckpt / "optimizer.bin", weights_only=False)["param_groups"]
    assert [g["initial_lr"] for g in groups] == [1e-3, 3e-3]
    raw = {k.removeprefix("text_encoder."): v for k, v in weights(ckpt / "model.safetensors").items()
           if k.startswith("text_encoder.")}
    exported = weights(out / "final" / "text_encoder" / "model.safetensors")
    shared = sorted(set(raw) & set(exported))
    assert len(shared) > 10
    assert max((raw[k].float() - exported[k].float()).abs().max().item() for k in shared) > 1e-6  # the EMA, not raw


def test_heldout_loss_of_a_trained_tower_encodes_captions_with_that_tower(tmp_path):
    """With `train_text_encoder`, the held-out loss of (U-Net, tower) must use that tower's caption
    embeddings, not the ones computed by the starting tower when the batch was fixed."""
    import copy

    from latentdiff.models import build_components
    from latentdiff.train.unet import EncodedData, HeldOutBatch, UNetTask, heldout_loss

    comps = build_components(load_config(TINY_UNET.parent / "tiny.yaml", ModelConfig))
    unet, te = comps["unet"].eval(), comps["text_encoder"].eval()
    other = copy.deepcopy(te)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5 * torch.randn_like(p))
    task = UNetTask(unet_cfg(tmp_path / "x", train_text_encoder=True))
    task.alphas_cumprod = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    task.prediction_type = "epsilon"
    ids = torch.randint(0, 1000, (3, 77))
    task.val_enc = EncodedData(torch.tensor([0, 1, 2, 1]), 2, token_ids=ids)
    shape = (4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    with torch.no_grad():
        start_emb = te(ids[task.val_enc.caption_index])[0]
    task.heldout = HeldOutBatch(torch.randn(shape), start_emb, torch.tensor([10, 200, 500, 900]), torch.randn(shape))
    base = heldout_loss(unet, task.heldout, task.alphas_cumprod, "epsilon", task.cfg.min_snr_gamma)
    assert task.heldout_value(unet, te) == pytest.approx(base, rel=1e-6)
    assert abs(task.heldout_value(unet, other) - base) > 1e-4 * abs(base)  # the tower it was given
