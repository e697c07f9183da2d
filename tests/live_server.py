"""A live `latentdiff serve` app for tests: uvicorn on a thread, on a free port of 127.0.0.1."""

import threading
import time
from pathlib import Path

import torch

from latentdiff import lora as L


def random_unet_lora(unet, path: Path, seed: int = 0) -> Path:
    """A rank-2 U-Net attention LoRA with random A and B, big enough to change the image."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and any(name.endswith("." + s) for s in L.UNET_ATTENTION_TARGETS):
            state[f"unet.{name}.lora_A.weight"] = torch.randn(2, m.in_features, generator=g) * 0.3
            state[f"unet.{name}.lora_B.weight"] = torch.randn(m.out_features, 2, generator=g) * 0.3
            state[f"unet.{name}.alpha"] = torch.tensor(2.0)
    return L.save_lora_state(path, state)


class LiveServer:
    """uvicorn serving ``create_app(config)`` on a thread, on a free port of 127.0.0.1."""

    def __init__(self, config):
        import uvicorn

        from latentdiff.server import bind, create_app

        self.config = config
        self.app = create_app(config)
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                break
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"

    def api(self, **kw):
        import webuiapi

        return webuiapi.WebUIApi(host="127.0.0.1", port=self.port, **kw)

    def post(self, path: str, **kw):
        import requests

        return requests.post(f"{self.url}/sdapi/v1/{path}", timeout=120, **kw)

    def get(self, path: str, **kw):
        import requests

        return requests.get(f"{self.url}/sdapi/v1/{path}", timeout=120, **kw)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.app.state.worker.stop()
