"""`latentdiff serve` costs: per-image latency through the A1111 API vs the pipeline call, and the time
from starting `latentdiff serve` to the first image.

    python benchmarks/bench_serve.py --repeats 10 --starts 3

1. Overhead (target <= 10%): one process serves the model on a loopback port (uvicorn on a thread) and
   the benchmark alternates, run by run, an HTTP ``POST /sdapi/v1/txt2img`` (JSON, queue, worker,
   PNG + infotext encoding, base64, response parsing) with a direct ``TextToImagePipeline.__call__`` on
   the same loaded pipeline with the same parameters, so background load hits both alike. Medians of
   both, and the paired overhead: each request's wall time minus the time its own pipeline call took
   on the worker (what the API adds, independent of how loaded the machine was during that run).
2. Load: 8 clients x 10 requests at once against a queue of 4: images vs 503s, RSS before and after.
3. Start to first image: ``latentdiff serve --port 0`` as a fresh process (imports, model load, bind),
   polled with txt2img until the first image arrives; wall time from spawning it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests


def _serve(app):
    """Run ``app`` on a free loopback port in a thread; (txt2img URL, stop function)."""
    import uvicorn

    from latentdiff.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(timeout=30)

    return f"http://127.0.0.1:{sock.getsockname()[1]}/sdapi/v1/txt2img", stop


def overhead(model: str, repeats: int, steps: int) -> dict:

    from latentdiff.server import ServeConfig, create_app

    app = create_app(ServeConfig(model=model))
    url, stop = _serve(app)
    pipe = app.state.engine.pipe
    inside: list[float] = []  # time inside pipe() of each API request, measured on the worker

    class Timed:
        def __getattr__(self, name):
            return getattr(pipe, name)

        def __call__(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return pipe(*a, **kw)
            finally:
                inside.append(time.perf_counter() - t0)

    app.state.engine.pipe = Timed()
    d = pipe.defaults
    from latentdiff.a1111 import sampler_for

    body = {"prompt": "red apple", "sampler_name": sampler_for(d.sampler).name, "steps": steps,
            "cfg_scale": d.guidance_scale, "width": pipe.default_size, "height": pipe.default_size}

    def api(seed):
        r = requests.post(url, json={**body, "seed": seed}, timeout=300)
        r.raise_for_status()
        base64.b64decode(r.json()["images"][0])

    def direct(seed):
        pipe("red apple", sampler=d.sampler, num_inference_steps=steps, guidance_scale=d.guidance_scale, seed=seed)

    api(0), direct(0)  # warm-up: oneDNN kernel selection, allocator, connection
    inside.clear()
    t_api, t_direct = [], []
    for i in range(repeats):
        for fn, times in ((api, t_api), (direct, t_direct)) if i % 2 == 0 else ((direct, t_direct), (api, t_api)):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
    stop()
    app.state.worker.stop()
    api_s, direct_s = statistics.median(t_api), statistics.median(t_direct)
    # paired: what one request costs beyond its own pipeline call (immune to load changing between runs)
    paired = [t - p for t, p in zip(t_api, inside)]
    return {"api_median_s": round(api_s, 4), "pipeline_median_s": round(direct_s, 4),
            "overhead_of_medians": round(api_s / direct_s - 1, 4),
            "paired_overhead_median_s": round(statistics.median(paired), 4),
            "paired_overhead_fraction": round(statistics.median(p / q for p, q in zip(paired, inside)), 4), "api_all_s": [round(t, 3) for t in t_api],
            "pipeline_all_s": [round(t, 3) for t in t_direct], "request": body}


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def load(model: str, clients: int, per_client: int, steps: int, queue_size: int) -> dict:
    """``clients`` threads each send ``per_client`` txt2img requests at once: how many got an image,
    how many a 503, the server process's RSS before and after, and the wall time."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from latentdiff.server import Limits, ServeConfig, create_app

    outputs = tempfile.TemporaryDirectory()
    app = create_app(ServeConfig(model=model, outputs=Path(outputs.name), limits=Limits(queue_size=queue_size)))
    url, stop = _serve(app)
    requests.post(url, json={"prompt": "warm-up", "steps": 1}, timeout=300).raise_for_status()
    rss0 = _rss()

    def client(i):
        codes = []
        for j in range(per_client):
            codes.append(requests.post(url, json={"prompt": f"red apple {i}", "steps": steps, "seed": 100 * i + j},
                                       timeout=300).status_code)
        return codes

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        codes = [c for cs in pool.map(client, range(clients)) for c in cs]
    wall = time.perf_counter() - t0
    saved = len(list(Path(outputs.name).glob("*.png")))
    stop()
    app.state.worker.stop()
    outputs.cleanup()
    return {"requests": len(codes), "images": codes.count(200), "busy_503": codes.count(503),
            "other": len(codes) - codes.count(200) - codes.count(503), "saved_pngs": saved,
            "wall_s": round(wall, 2), "rss_before_mib": round(rss0 / 2**20), "rss_after_mib": round(_rss() / 2**20),
            "steps": steps, "queue_size": queue_size}


def start_to_first_image(model: str, steps: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "latentdiff.cli", "serve", "--model", model, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"loaded in ([\d.]+) s; (http://\S+/)", line)
        if not m:
            raise RuntimeError(f"unexpected first line from latentdiff serve: {line!r}")
        url = m.group(2) + "sdapi/v1/txt2img"
        while True:
            try:
                r = requests.post(url, json={"prompt": "red apple", "steps": steps, "seed": 0}, timeout=300)
                break
            except requests.ConnectionError:  # uvicorn binds the socket, then starts serving
                time.sleep(0.02)
        r.raise_for_status()
        assert r.json()["images"]
        return {"start_to_first_image_s": round(time.perf_counter() - t0, 3), "model_load_s": float(m.group(1))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10, help="timed runs of each path (alternating)")
    p.add_argument("--starts", type=int, default=3, help="fresh `latentdiff serve` processes to time")
    p.add_argument("--load-clients", type=int, default=8)
    p.add_argument("--load-requests", type=int, default=10, help="requests per client")
    p.add_argument("--load-steps", type=int, default=5, help="steps per load-test image (short, to bound the run)")
    p.add_argument("--queue-size", type=int, default=4)
    args = p.parse_args(argv)
    load_avg = os.getloadavg()
    result = {"overhead": overhead(args.model, args.repeats, args.steps)}
    result["load"] = load(args.model, args.load_clients, args.load_requests, args.load_steps, args.queue_size)
    starts = [start_to_first_image(args.model, args.steps) for _ in range(args.starts)]
    result["start"] = {"start_to_first_image_median_s": statistics.median(s["start_to_first_image_s"] for s in starts),
                       "model_load_median_s": statistics.median(s["model_load_s"] for s in starts), "runs": starts}
    result["load_average"] = [load_avg, os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
