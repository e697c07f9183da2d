"""The `latentdiff` process itself: generate exits without the interpreter's teardown (cli.entry) and
still prints every path and leaves complete PNGs; user errors keep their exit code."""

import os
import subprocess
import sys

from PIL import Image

# stdout block-buffered, as in a user's shell when piped (PYTHONUNBUFFERED would hide a missing flush)
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "OMP_NUM_THREADS": "1"}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "latentdiff.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=300)


def _run_side_by_side(*arg_lists):
    """Several one-thread `latentdiff` processes at once (each is mostly start-up): the results in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "latentdiff.cli", *args], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in arg_lists]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_generate_process_prints_paths_and_writes_whole_pngs(tiny_pipeline_dir, tmp_path):
    res = _run("generate", "red apple", "--model", str(tiny_pipeline_dir), "--steps", "2", "--seed", "0", "-n", "2",
               "--grid", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    printed = res.stdout.split()  # piped stdout is block-buffered: lost without the flush before os._exit
    assert len(printed) == 3 and all(p.endswith(".png") for p in printed)
    assert sorted(printed) == sorted(str(p) for p in tmp_path.glob("*.png"))
    for p in printed:
        with Image.open(p) as im:
            im.load()  # a truncated file fails here
            assert "latentdiff" in im.text or p.endswith("grid.png")


def test_generate_user_error_exit_code(tmp_path):
    res = _run("generate", "red apple", "--steps", "0", "--out", str(tmp_path))
    assert res.returncode == 2 and "error:" in res.stderr


def test_train_no_progress_silences_the_loops_own_bar(tmp_path):
    """`--no-progress` (a background run's log): the loop passes its own ``disable=`` to tqdm, which a
    patched default alone did not override; the bar must still be absent, and a "step N/M: loss" log
    line stands in for it at log_every."""
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny_unet.yaml"
    args = ("train", "unet", "--config", str(cfg), "--device", "cpu",
            "--max-train-steps", "3", "--set", "data.max_samples=16", "--set", "data.validation_split=",
            "--set", "optim.batch_size=4", "--set", "checkpointing_steps=0", "--set", "log_every=1")
    quiet, loud = _run_side_by_side((*args, "--output-dir", str(tmp_path / "quiet"), "--no-progress"),
                                    (*args, "--output-dir", str(tmp_path / "loud")))
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:] + loud.stderr[-2000:]
    assert "train unet:" in loud.stderr  # the bar's description: the check below can see a bar
    assert "train unet:" not in quiet.stderr and "it/s" not in quiet.stderr
    assert "INFO latentdiff.train" in quiet.stderr
    assert "step 3/3: loss" in quiet.stderr and "step 3/3: loss" not in loud.stderr  # log lines replace the bar


def test_eval_no_progress_silences_transformers_loading_bar_too():
    """`latentdiff eval --no-progress`: ours and the libraries' bars ("Loading weights", transformers')
    are all off; without the flag they show, so the check below can see one."""
    args = ("eval", "--sections", "colour", "--colour-limit", "1", "--steps", "1")
    quiet, loud = _run_side_by_side((*args, "--no-progress"), args)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:] + loud.stderr[-2000:]
    assert "Loading weights" in loud.stderr and "it/s" in loud.stderr
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr
    assert "Colour words" in quiet.stdout
