import logging
import os
from pathlib import Path

# Hermetic: no test may reach the Hub (tests/test_hub.py points the client at its own fake server
# and switches this off there). Set before any test module imports huggingface_hub, which reads it
# once at import.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_config():
    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig

    return load_config(ROOT / "configs" / "tiny.yaml", ModelConfig)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_config):
    """A randomly initialised tiny pipeline saved in the diffusers layout (built once per session)."""
    from latentdiff.pipelines import TextToImagePipeline

    path = tmp_path_factory.mktemp("tiny") / "pipe"
    TextToImagePipeline.from_config(tiny_config, seed=0).save_pretrained(path)
    return path


@pytest.fixture
def tiny_pipe(tiny_pipeline_dir):
    from latentdiff.pipelines import TextToImagePipeline

    return TextToImagePipeline.from_pretrained(tiny_pipeline_dir)


@pytest.fixture(autouse=True)
def _quiet_libraries():
    for name in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    yield
