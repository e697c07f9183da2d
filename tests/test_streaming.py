"""The streamed (sharded, on-disk) latent cache of the U-Net trainer (train/data.py): it holds the
same latents and embeddings as the in-memory cache for every source, a killed build continues from
its last complete shard, DataLoader workers decode the same pixels as the main process, a step
reads only its own rows, training on it matches training from memory, and 2 processes match 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from shapes import MIXED_SIZES, render_shapes
from test_train import ENV, _FakeAccelerator, cli_args, free_port, max_abs_diff, unet_cfg, weights

import latentdiff.train.data as data_mod
from latentdiff.train.common import load_image_data
from latentdiff.train.data import StreamedImages, prepare_streamed
from latentdiff.train.unet import build_components, prepare_data
from latentdiff.train.unet import train as train_unet


class _Run:
    """What prepare_streamed needs of the loop's Run, for one process."""

    def __init__(self, out: Path, cfg):
        self.accelerator, self.device, self.out, self.cfg = _FakeAccelerator(), torch.device("cpu"), out, cfg


def streamed(cfg, out: Path, cache: Path):
    comps = build_components(cfg)
    source = StreamedImages(cfg.data, cfg.data.split, comps.resolution)
    return source, comps, prepare_streamed(source, comps, cfg, _Run(out, cfg), cache)


def shard_tensors(root: Path) -> dict[str, torch.Tensor]:
    return {f"{f.relative_to(root)}:{k}": v for f in sorted(root.rglob("shard-*.safetensors"))
            for k, v in load_file(str(f)).items()}


def make_source(kind: str, root: Path) -> str:
    """The same 16 mixed-aspect shapes as a kohya .txt folder, an imagefolder with metadata.jsonl,
    or a `datasets` save_to_disk folder."""
    if kind == "kohya":
        return str(render_shapes(root / "kohya", MIXED_SIZES, captions="txt"))
    folder = render_shapes(root / "imagefolder", MIXED_SIZES, captions="jsonl")
    if kind == "imagefolder":
        return str(folder)
    import datasets

    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_dict({"image": [str(folder / r["file_name"]) for r in rows],
                                     "text": [r["text"] for r in rows]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(root / "disk"))
    return str(root / "disk")


@pytest.mark.parametrize("kind", ["emoji", "kohya", "imagefolder", "datasets"])
def test_streamed_cache_holds_what_the_in_memory_cache_holds(kind, tmp_path):
    source = "emoji" if kind == "emoji" else make_source(kind, tmp_path)
    over = {"data.source": source, "data.streaming": True, "data.shard_size": 5, "data.num_workers": 0,
            "data.random_flip": True, "data.max_samples": 12}
    cfg = unet_cfg(tmp_path / "out", **over)
    src, comps, enc = streamed(cfg, tmp_path / "out", tmp_path / "cache")
    mem = prepare_data(load_image_data(cfg.data, "train", 32), comps, cfg, _FakeAccelerator(), tmp_path / "mem",
                       flips=True)
    n = len(src)
    assert n == 12 and len(list(enc.root.rglob("shard-*.safetensors"))) == 3  # 5 + 5 + 2
    idx = torch.arange(n)
    for flip in (False, True):
        f = torch.full((n,), flip)
        mean, std, text = enc.read(idx, f)
        torch.testing.assert_close(mean, mem.mean[int(flip)], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std, mem.std[int(flip)], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text, mem.text_embeddings[mem.caption_index], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.uncond, mem.text_embeddings[mem.uncond_index], atol=1e-5, rtol=1e-5)
    # and the pixels are the in-memory path's, bit for bit (the latents differ only by VAE batch rounding)
    images = load_image_data(cfg.data, "train", 32).images
    assert all(torch.equal(src[i], images[i]) for i in range(n))


def test_webdataset_tar_shards_stream_the_same_pixels_as_the_folder(tmp_path):
    """Two webdataset-style tars (key.png + key.txt) hold the kohya folder's images: the bucketed
    cache built from them is the folder's, bit for bit (the tars are read by offset, not extracted)."""
    import tarfile

    folder = Path(make_source("kohya", tmp_path))
    files = sorted(folder.iterdir())
    (tmp_path / "tars").mkdir()
    for part in (0, 1):
        with tarfile.open(tmp_path / "tars" / f"shard-{part:04d}.tar", "w") as tf:
            for f in files[part * len(files) // 2:(part + 1) * len(files) // 2]:
                tf.add(f, arcname=f.name)
    buckets = {"data.aspect_buckets": True, "data.bucket_reso_steps": 4, "data.min_bucket_reso": 16,
               "data.max_bucket_reso": 64, "data.shard_size": 4, "data.num_workers": 1, "data.max_samples": 0}
    a_src, _, a = streamed(unet_cfg(tmp_path / "a", **buckets, **{"data.source": str(folder)}), tmp_path / "a",
                           tmp_path / "ca")
    b_src, _, b = streamed(unet_cfg(tmp_path / "b", **buckets, **{"data.source": str(tmp_path / "tars")}),
                           tmp_path / "b", tmp_path / "cb")
    assert b_src.captions == a_src.captions and len(b_src) == len(MIXED_SIZES)
    assert b_src.plan == a_src.plan
    ta, tb = shard_tensors(a.root), shard_tensors(b.root)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    # and the U-Net trains from the tars (no validation split in a folder of tars)
    summary = train_unet(unet_cfg(tmp_path / "run", **{"data.source": str(tmp_path / "tars"), "data.streaming": True,
                                                        "data.max_samples": 0, "data.num_workers": 0,
                                                        "optim.max_train_steps": 2, "checkpointing_steps": 0}))
    assert summary["steps"] == 2 and summary["bucket_counts"] == [len(MIXED_SIZES)]


def test_killed_cache_build_continues_from_the_last_complete_shard(tmp_path, monkeypatch):
    over = {"data.streaming": True, "data.shard_size": 4, "data.num_workers": 0, "data.max_samples": 16}
    cfg = unet_cfg(tmp_path / "out", **over)
    _, _, fresh = streamed(cfg, tmp_path / "out", tmp_path / "fresh")

    save, written = data_mod.save_tensors_atomic, []

    def save_twice_then_die(tensors, path, metadata=None):
        if len(written) == 2:
            raise KeyboardInterrupt("killed while building shard 3")
        save(tensors, path, metadata)
        written.append(path.name)

    monkeypatch.setattr(data_mod, "save_tensors_atomic", save_twice_then_die)
    with pytest.raises(KeyboardInterrupt):
        streamed(cfg, tmp_path / "out", tmp_path / "killed")
    monkeypatch.setattr(data_mod, "save_tensors_atomic", save)
    root = tmp_path / "killed" / fresh.root.name
    assert sorted(p.name for p in root.rglob("*.safetensors")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not [p for p in root.rglob("*") if p.name.startswith(".")], "a partial shard was left visible"

    encoded = []
    real = data_mod.build_shards

    def counting(*a, **k):
        encoded.append(n := real(*a, **k))
        return n

    monkeypatch.setattr(data_mod, "build_shards", counting)
    _, _, resumed = streamed(cfg, tmp_path / "out", tmp_path / "killed")
    assert encoded == [2], "the resumed build re-encoded complete shards (or skipped missing ones)"
    a, b = shard_tensors(fresh.root), shard_tensors(resumed.root)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, _, again = streamed(cfg, tmp_path / "out", tmp_path / "killed")
    assert encoded == [2, 0]  # complete: nothing is encoded again


def test_dataloader_workers_decode_the_same_pixels(tmp_path):
    src = make_source("kohya", tmp_path)
    over = {"data.source": src, "data.streaming": True, "data.shard_size": 8}
    _, _, main = streamed(unet_cfg(tmp_path / "o", **over, **{"data.num_workers": 0}), tmp_path / "o", tmp_path / "c0")
    _, _, workers = streamed(unet_cfg(tmp_path / "o", **over, **{"data.num_workers": 2}), tmp_path / "o",
                             tmp_path / "c2")
    a, b = shard_tensors(main.root), shard_tensors(workers.root)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_reads_only_its_own_rows(tmp_path, monkeypatch):
    cfg = unet_cfg(tmp_path / "out", **{"data.streaming": True, "data.shard_size": 8, "data.num_workers": 0})
    _, _, enc = streamed(cfg, tmp_path / "out", tmp_path / "cache")
    reads = []
    pread = data_mod.os.pread

    def counting_pread(fd, n, offset):
        reads.append(n)
        return pread(fd, n, offset)

    idx = torch.tensor([3, 17, 30, 9])
    enc.read(idx, torch.zeros(4, dtype=torch.bool))  # opens the shards (reads their headers): count the data only
    monkeypatch.setattr(data_mod.os, "pread", counting_pread)
    mean, std, text = enc.read(idx, torch.tensor([True, False, True, False]))
    row = mean[0].numel() * 4 + std[0].numel() * 4 + text[0].numel() * 4
    assert sum(reads) == 4 * row, f"read {sum(reads)} bytes for a batch of 4 rows of {row}"


def test_training_on_the_streamed_cache_matches_training_from_memory(tmp_path):
    common = {"optim.max_train_steps": 3, "checkpointing_steps": 3, "data.random_flip": True,
              "data.caption_dropout": 0.3}
    train_unet(unet_cfg(tmp_path / "mem", **common))
    summary = train_unet(unet_cfg(tmp_path / "disk", **common, **{"data.streaming": True, "data.shard_size": 8,
                                                                   "data.num_workers": 1}))
    assert summary["buckets"] == ["32x32"] and summary["bucket_counts"] == [32]
    a = weights(tmp_path / "mem/checkpoints/checkpoint-3/model.safetensors")
    b = weights(tmp_path / "disk/checkpoints/checkpoint-3/model.safetensors")
    assert (tmp_path / "disk/final/unet/diffusion_pytorch_model.safetensors").is_file()
    d = max_abs_diff(a, b)
    print(f"in-memory vs streamed cache after 3 steps: max |Δ| = {d:.2e}")
    assert d <= 1e-5


# ----------------------------------------------------------------------------------------------
# 2 processes == 1 process, batch for batch, on the streamed cache and with buckets
# ----------------------------------------------------------------------------------------------

RECORD = """
import hashlib, json, os, sys
import latentdiff.train.unet as unet
loss = unet.UNetTask.loss
def h(t):
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
def recording_loss(self, run, model, b):
    z0, emb = self.enc.inputs(b["idx"], b["flip"], b["drop"], b["post"], self.scaling_factor)
    rank, n = run.accelerator.process_index, len(b["idx"])
    with open(os.path.join(run.cfg.output_dir, f"batches-{rank}.jsonl"), "a") as f:
        for i in range(n):
            f.write(json.dumps({"step": run.step, "pos": rank * n + i, "idx": int(b["idx"][i]),
                                "shape": list(z0.shape[1:]), "t": int(b["t"][i]), "eps": h(b["eps"][i]),
                                "z0": h(z0[i]), "emb": h(emb[i])}) + "\\n")
    return loss(self, run, model, b)
unet.UNetTask.loss = recording_loss
sys.exit(unet.main(sys.argv[1:]))
"""


def batches(out: Path) -> dict:
    rows = [json.loads(line) for f in sorted(out.glob("batches-*.jsonl")) for line in f.read_text().splitlines()]
    return {(r["step"], r["pos"]): r for r in rows}


def two_process_matches_one(tmp_path: Path, over: dict) -> None:
    steps = 4
    common = {"optim.max_train_steps": steps, "checkpointing_steps": steps, "checkpoints_total_limit": 0,
              "cache_dir": str(tmp_path / "cache"), **over}
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    one = subprocess.run([sys.executable, str(script), *cli_args(tmp_path / "one", **common, **{"optim.batch_size": 8})],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(script),
           *cli_args(tmp_path / "two", **common, **{"optim.batch_size": 4})]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    b1, b2 = batches(tmp_path / "one"), batches(tmp_path / "two")
    assert len(b1) == steps * 8 and b1.keys() == b2.keys()
    assert (tmp_path / "two/batches-1.jsonl").is_file(), "the launcher did not start 2 processes"
    diff = [k for k in b1 if b1[k] != b2[k]]
    assert not diff, f"batches differ between 1 and 2 processes at {diff[:3]}: {b1[diff[0]]} vs {b2[diff[0]]}"
    summary = json.loads((tmp_path / "two/final/training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 8
    d = max_abs_diff(weights(tmp_path / f"one/checkpoints/checkpoint-{steps}/model.safetensors"),
                     weights(tmp_path / f"two/checkpoints/checkpoint-{steps}/model.safetensors"))
    print(f"1 vs 2 processes after {steps} steps: max |Δ| = {d:.2e}")
    assert d <= 1e-5


def test_two_process_run_matches_one_process_on_the_streamed_cache(tmp_path):
    two_process_matches_one(tmp_path, {"data.streaming": True, "data.shard_size": 8, "data.num_workers": 0})


def test_trainers_without_the_streamed_cache_refuse_it_in_one_line(tmp_path, capsys):
    from latentdiff.cli import main

    vae = ["train", "vae", "--config", str(Path(__file__).parents[1] / "configs/tiny_vae.yaml"), "--output-dir",
           str(tmp_path / "vae"), "--device", "cpu", "--set", "data.max_samples=8", "--set", "data.streaming=true"]
    assert main(vae) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "data.streaming" in err[0] and "vae" in err[0], err
    with pytest.raises(ValueError, match="cache: true"):
        unet_cfg(tmp_path / "u", **{"data.streaming": True, "cache": False})
