"""The colour-word report over several seeds: pass k is what `--seed seed+k` alone gives, and the rate
is pooled over every image (one pass of 36 prompts moves by up to ~10 points from seed to seed)."""

import pytest
import torch
from stand_ins import ImagePipe

from latentdiff.emoji_eval import colour_report

RGB = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def draws_its_colour_only_at_seed_0(prompt, seed):
    """The asked colour at seed 0, grey otherwise: each (prompt, seed) pair is told apart by the check."""
    rgb = RGB[prompt.split()[0]] if seed == 0 else (0.5, 0.5, 0.5)
    return torch.tensor(rgb).view(3, 1, 1).expand(3, 16, 16).clone()


def test_colour_seeds_pool_every_pass_and_each_pass_is_its_own_seed():
    pipe, prompts = ImagePipe(draws_its_colour_only_at_seed_0), ["red heart", "blue heart"]
    r = colour_report(pipe, prompts, seeds=3, progress=False)
    # prompt i of pass k has seed k + i: only (red heart, pass 0) sees seed 0
    assert r["n"] == 6 and r["obeyed"] == 1 and r["rate"] == pytest.approx(1 / 6)
    assert r["per_seed"] == [0.5, 0.0, 0.0] and r["seeds"] == 3 and len(r["images"]) == 6
    for k in range(3):  # the same as the one-seed report at --seed k
        assert colour_report(pipe, prompts, seed=k, progress=False)["rate"] == r["per_seed"][k]
    assert colour_report(pipe, prompts, progress=False)["per_seed"] == [0.5]
    with pytest.raises(ValueError, match="at least 1"):
        colour_report(pipe, prompts, seeds=0, progress=False)


def test_markdown_says_the_seeds_and_their_spread_only_when_pooled():
    from latentdiff.eval_cli import markdown_report

    pipe, prompts = ImagePipe(draws_its_colour_only_at_seed_0), ["red heart", "blue heart"]
    for seeds, row in [(3, "| generated | 6 (2 × 3 seeds) | 16.7% (per seed 0.0%–50.0%) |"),
                       (1, "| generated | 2 | 50.0% |")]:
        r = colour_report(pipe, prompts, seeds=seeds, progress=False)
        r.pop("images")
        assert row in markdown_report({"colour": r}).splitlines()
