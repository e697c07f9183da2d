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
