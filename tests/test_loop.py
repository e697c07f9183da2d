"""The shared training loop, for every trainer: SIGKILLed after a checkpoint, a resumed run is
bit-identical to an uninterrupted one (weights, optimizer, EMA, LR schedule, the export), the last
step is checkpointed, wall time adds up across the resume, and a bad config key is one line.

Each trainer runs its tiny config on CPU with one thread; the killed run is a real subprocess that
sends itself SIGKILL right after checkpoint 2 is complete (a deterministic moment, so the test does
not depend on timing)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "TQDM_DISABLE": "1"}
STEPS, KILL_AT = 6, 2
COMMON = {"optim.max_train_steps": STEPS, "checkpointing_steps": 2, "checkpoints_total_limit": 0, "log_every": 1,
          "ema.decay": 0.9, "ema.use_warmup": False}

# trainer -> (config, overrides, export folder whose weights must agree)
TRAINERS = {
    "unet": ("tiny_unet.yaml", {"data.max_samples": 32, "data.validation_split": "", "optim.batch_size": 8,
                                "validation_steps": 0}, "final"),
    "vae": ("tiny_vae.yaml", {"data.max_samples": 32, "data.validation_split": "", "optim.batch_size": 8,
                              "validation_steps": 0}, "vae"),
    "lora": ("tiny_lora.yaml", {"base": "{pipe}", "validation_prompts": "[]"}, "final"),
    "classifier": ("tiny_classifier.yaml", {"vae_from": "{pipe}", "data.max_samples": 32,
                                            "data.max_validation_samples": 8, "validation_steps": 0,
                                            "eval_timesteps": "[0]"}, "final"),
    "lcm": ("tiny_lcm.yaml", {"base": "{pipe}", "validation_prompts": "[]"}, "final"),
    "embedding": ("tiny_embedding.yaml", {"base": "{pipe}", "validation_prompts": "[]"}, "final"),
    "clip": ("tiny_clip.yaml", {"data.max_samples": 48, "optim.batch_size": 16, "data.validation_split": ""},
             "text_encoder"),
}

KILL_AFTER_SAVE = """
import os, signal, sys
import latentdiff.train.loop as loop
save = loop.save_checkpoint
def save_then_die(accelerator, out, step, *a, **k):
    path = save(accelerator, out, step, *a, **k)
    if step == {step}:  # checkpoint {step} is complete (renamed into place): die as a power cut would
        os.kill(os.getpid(), signal.SIGKILL)
    return path
loop.save_checkpoint = save_then_die
from latentdiff.cli import main
sys.exit(main(sys.argv[1:]))
"""


def args_for(trainer: str, out: Path, pipe: Path, **extra) -> list[str]:
    config, overrides, _ = TRAINERS[trainer]
    args = ["--config", str(CONFIGS / config), "--output-dir", str(out), "--device", "cpu", "--num-threads", "1"]
    for k, v in {**COMMON, **overrides, **extra}.items():
        args += ["--set", f"{k}={str(v).replace('{pipe}', str(pipe))}"]
    return args


def run_in_process(trainer: str, args: list[str]) -> None:
    torch.set_num_threads(1)
    assert importlib.import_module(f"latentdiff.train.{trainer}").main(args) == 0


def _flatten(obj, prefix: str, out: dict) -> None:
    """The tensors and numbers of a pickled checkpoint object, keyed by their path."""
    if torch.is_tensor(obj):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _flatten(obj[k], f"{prefix}.{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}", out)
    elif isinstance(obj, (int, float)):
        out[prefix] = torch.tensor(obj, dtype=torch.float64)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint or export holds: safetensors weights, the optimizer, and the
    registered states (LR schedule, EMA) accelerate pickles as custom_checkpoint_N.pkl."""
    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(str(f)).items()})
    for f in sorted(folder.glob("*.bin")) + sorted(folder.glob("custom_checkpoint_*.pkl")):
        _flatten(torch.load(f, weights_only=False, map_location="cpu"), f.name, out)
    return out


def assert_equal_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: different contents {sorted(set(a) ^ set(b))[:5]}"
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{what}: {len(diff)} tensors differ after the resume, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig
    from latentdiff.pipelines import TextToImagePipeline

    path = tmp_path_factory.mktemp("loop") / "pipe"
    TextToImagePipeline.from_config(load_config(CONFIGS / "tiny.yaml", ModelConfig), seed=0).save_pretrained(path)
    return path


# The default suite resumes the two trainers whose states differ most (the U-Net with EMA and its
# data cache; an adapter-only LoRA on a loaded base); the other five are `-m slow` (~15 s each, mostly
# interpreter start-up), to keep the default suite inside its 10 minutes on a 2-core machine.
DEFAULT_RESUMED = {"unet", "lora"}


@pytest.mark.parametrize("trainer", [t if t in DEFAULT_RESUMED else pytest.param(t, marks=pytest.mark.slow)
                                     for t in sorted(TRAINERS)])
def test_sigkill_and_resume_is_bit_exact_for_every_trainer(trainer, pipe, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # the run to be killed is a process of its own and one thread, like the reference here: the two run
    # side by side (separate folders, caches inside them), which halves the wall time on two cores
    proc = subprocess.Popen([sys.executable, "-c", KILL_AFTER_SAVE.format(step=KILL_AT), "train", trainer,
                             *args_for(trainer, killed, pipe)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        run_in_process(trainer, args_for(trainer, ref, pipe))
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    ckpts = ref / "checkpoints"
    assert (ckpts / f"checkpoint-{STEPS}" / "trainer_state.json").is_file(), "no checkpoint at the last step"
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [f"checkpoint-{KILL_AT}"]
    export = TRAINERS[trainer][2]
    assert not (killed / export).exists()
    wall_at_kill = json.loads((killed / f"checkpoints/checkpoint-{KILL_AT}/trainer_state.json").read_text())["wall_time_s"]

    run_in_process(trainer, args_for(trainer, killed, pipe) + ["--resume", "latest"])
    a, b = ckpts / f"checkpoint-{STEPS}", killed / f"checkpoints/checkpoint-{STEPS}"
    assert_equal_tensors(tensors(a), tensors(b), f"{trainer} checkpoint-{STEPS}")
    assert_equal_tensors(tensors(ref / export), tensors(killed / export), f"{trainer} export {export}/")
    # the comparison is not vacuous: training moved the weights between the checkpoints
    first, last = tensors(ckpts / f"checkpoint-{KILL_AT}"), tensors(a)
    assert any(not torch.equal(first[k], last[k]) for k in first if k.endswith(".safetensors") or "safetensors:" in k)

    summary = json.loads((killed / export / "training_summary.json").read_text())
    assert summary["trainer"] == trainer and summary["steps"] == STEPS and summary["start_step"] == KILL_AT
    assert summary["resumed_from"].endswith(f"checkpoint-{KILL_AT}")
    assert summary["wall_time_s"] > wall_at_kill > 0  # the killed run's time is counted, not restarted from 0
    assert (killed / export / "training_config.yaml").is_file()


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_a_bad_config_key_is_one_line_for_every_trainer(trainer, pipe, tmp_path, capsys):
    from latentdiff.cli import main

    rc = main(["train", trainer, *args_for(trainer, tmp_path / "out", pipe, **{"optim.nonsense": 1})])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "nonsense" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_a_section_given_in_part_keeps_the_trainers_own_defaults(tmp_path):
    """`train lora --max-train-steps 6` sets optim.max_train_steps only: the rest of the section is
    LoRA's (batch 4, no weight decay), not the generic OptimConfig's (batch 64, decay 1e-2)."""
    from latentdiff.config import load_config
    from latentdiff.train.lora import LoraTrainConfig

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    cfg = load_config(empty, LoraTrainConfig, {"optim.max_train_steps": 6, "data.source": "emoji"})
    assert (cfg.optim.max_train_steps, cfg.optim.batch_size, cfg.optim.adam_weight_decay) == (6, 4, 0.0)
