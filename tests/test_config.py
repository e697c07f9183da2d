"""Typed configs: a union's error keeps why each alternative failed; the scheduler's spacing takes
every spacing the samplers know."""

from dataclasses import dataclass

import pytest

from latentdiff.config import ConfigError, from_dict
from latentdiff.diffusion import TIMESTEP_SPACINGS
from latentdiff.models import SchedulerConfig


@dataclass
class _Union:
    size: int | None = None
    scale: float | str = 1.0


def test_a_union_mismatch_says_why_each_type_was_refused():
    with pytest.raises(ConfigError) as e:
        from_dict(_Union, {"size": "big"})
    assert str(e.value) == "size: 'big' does not match int | None (expected an integer, got str 'big')"
    with pytest.raises(ConfigError, match=r"expected a number, got list \[1\]; expected a string, got list \[1\]"):
        from_dict(_Union, {"scale": [1]})


@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_scheduler_config_accepts_every_timestep_spacing(spacing):
    assert from_dict(SchedulerConfig, {"timestep_spacing": spacing}).timestep_spacing == spacing


def test_the_cli_help_names_trainer_configs_not_model_configs(capsys):
    """`latentdiff train KIND --config X`: X must be a trainer config (configs/emoji_unet.yaml), not
    the model config it points to (configs/emoji.yaml), which the trainer rejects."""
    import re
    from pathlib import Path

    from latentdiff import cli
    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig

    assert cli.main(["train"]) == 2
    texts = cli.MAIN_HELP + capsys.readouterr().out
    named = re.findall(r"latentdiff train \w+ --config (\S+)", texts)
    assert len(named) >= 2
    root = Path(__file__).resolve().parents[1]
    for path in named:
        assert (root / path).is_file(), path
        with pytest.raises(ConfigError):
            load_config(root / path, ModelConfig)
