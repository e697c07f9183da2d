"""`latentdiff serve` through real clients: the PyPI ``webuiapi`` client (what A1111 integrations use)
and plain HTTP, against a live uvicorn server on a free loopback port, serving the tiny test model.

Every image is compared pixel for pixel with ``TextToImagePipeline`` called directly with the same
parameters, so the API can neither drop nor mistranslate a setting unnoticed.
"""

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webuiapi = pytest.importorskip("webuiapi")
requests = pytest.importorskip("requests")

try:
    from live_server import LiveServer, random_unet_lora
except ImportError:  # tests/ imported as a package
    from tests.live_server import LiveServer, random_unet_lora

from latentdiff.server import Limits, ServeConfig  # noqa: E402

PROMPT, NEGATIVE = "red apple", "blurry green"
SIZE = dict(width=32, height=32)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_pipeline_dir, tiny_config):
    from latentdiff.pipelines import TextToImagePipeline

    root = tmp_path_factory.mktemp("serve")
    models = root / "models"
    TextToImagePipeline.from_config(tiny_config, seed=1).save_pretrained(models / "tiny_b")
    loras = root / "loras"
    unet = TextToImagePipeline.from_pretrained(tiny_pipeline_dir).unet
    shiny = random_unet_lora(unet, loras / "shiny.safetensors")
    outside = random_unet_lora(unet, root / "elsewhere" / "secret.safetensors", seed=1)
    (loras / "escape.safetensors").symlink_to(outside)  # a link out of --lora-dir: never listed or loaded
    embeddings = root / "embeddings"
    embeddings.mkdir()
    (embeddings / "style.safetensors").write_bytes(b"")
    return {"models": models, "loras": loras, "shiny": shiny, "embeddings": embeddings,
            "outputs": root / "outputs"}


@pytest.fixture(scope="module")
def server(dirs, tiny_pipeline_dir):
    s = LiveServer(ServeConfig(model=str(tiny_pipeline_dir), models_dir=dirs["models"], lora_dir=dirs["loras"],
                               embeddings_dir=dirs["embeddings"], outputs=dirs["outputs"],
                               limits=Limits(queue_size=4, max_batch=8, max_body_bytes=2**20)))
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir):
    """The same model, called directly."""
    from latentdiff.pipelines import TextToImagePipeline

    return TextToImagePipeline.from_pretrained(tiny_pipeline_dir)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB")) for im in images])


def info_of(response) -> dict:
    return json.loads(response.json()["info"])


# ----------------------------------------------------------------------------------------------
# The webuiapi client
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a1111_name, ours, schedule", [
    ("DDIM", "ddim", None), ("DPM++ 2M", "dpmpp_2m", None), ("DDPM", "ddpm", None),
    ("Euler a", "euler_a", None), ("DPM++ 2M Karras", "dpmpp_2m", "karras")])
def test_webuiapi_txt2img_equals_the_pipeline(server, reference, a1111_name, ours, schedule):
    api = server.api()
    r = api.txt2img(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name=a1111_name, steps=3, cfg_scale=4.0,
                    seed=7, batch_size=2, **SIZE)
    # webuiapi always sends eta=1.0; A1111 gives it to DDIM (stochastic DDIM) and nothing else
    eta = 1.0 if ours == "ddim" else None
    want = reference(PROMPT, NEGATIVE, sampler=ours, num_inference_steps=3, guidance_scale=4.0, seed=7,
                     num_images_per_prompt=2, eta=eta, height=32, width=32, sigma_schedule=schedule).images
    assert len(r.images) == 2
    np.testing.assert_array_equal(pixels(r.images), pixels(want))
    assert r.info["all_seeds"] == [7, 8] and r.info["sampler_name"] == a1111_name
    assert ("eta" in r.info["ignored"]) == (ours != "ddim")
    # and the settings mattered: another seed gives other pixels
    other = reference(PROMPT, NEGATIVE, sampler=ours, num_inference_steps=3, guidance_scale=4.0, seed=9,
                      eta=eta, height=32, width=32).images
    assert not np.array_equal(pixels(r.images[:1]), pixels(other))


def test_n_iter_continues_the_seeds_and_scheduler_changes_spacing(server, reference):
    r = server.api().txt2img(prompt=PROMPT, sampler_name="DPM++ 2M", scheduler="trailing", steps=3, seed=3,
                             batch_size=1, n_iter=2, cfg_scale=5.0, **SIZE)
    want = reference(PROMPT, sampler="dpmpp_2m", num_inference_steps=3, seed=3, num_images_per_prompt=2,
                     guidance_scale=5.0, timestep_spacing="trailing", height=32, width=32).images
    np.testing.assert_array_equal(pixels(r.images), pixels(want))
    assert "Schedule type: Trailing" in r.info["infotexts"][0]


def test_defaults_are_the_models_and_unsupported_fields_are_reported(server, reference):
    r = server.post("txt2img", json={"prompt": PROMPT, "seed": 1, "restore_faces": True, "tiling": False,
                                     "my_extension_field": 3})
    assert r.status_code == 200, r.text
    info = info_of(r)
    d = reference.defaults
    want = reference(PROMPT, seed=1).images  # the model's own sampler, steps, guidance and size
    np.testing.assert_array_equal(pixels([Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))]),
                                  pixels(want))
    assert (info["steps"], info["cfg_scale"], info["width"]) == (d.num_inference_steps, d.guidance_scale,
                                                                 reference.default_size)
    assert info["ignored"] == {"restore_faces": True, "my_extension_field": 3}  # tiling=False is "off"


def test_lora_tag_equals_load_lora(server, reference, dirs):
    api = server.api()
    kw = dict(sampler_name="DDIM", steps=3, seed=2, cfg_scale=4.0, eta=0.0, **SIZE)
    tagged = api.txt2img(prompt=f"{PROMPT} <lora:shiny:0.7>", **kw)
    plain = api.txt2img(prompt=PROMPT, **kw)  # the LoRA is off again without the tag
    ref = dict(sampler="ddim", num_inference_steps=3, seed=2, guidance_scale=4.0, eta=0.0, height=32, width=32)
    base = reference(PROMPT, **ref).images
    np.testing.assert_array_equal(pixels(plain.images), pixels(base))
    reference.load_lora(dirs["shiny"], adapter_name="shiny", scale=0.7)
    try:
        with_lora = reference(PROMPT, **ref).images
    finally:
        reference.unload_lora()
    np.testing.assert_array_equal(pixels(tagged.images), pixels(with_lora))
    assert not np.array_equal(pixels(with_lora), pixels(base))  # the LoRA changes the image
    text = tagged.info["infotexts"][0]
    assert text.startswith(f"{PROMPT} <lora:shiny:0.7>\n") and "Lora hashes: " in text


def _init_image() -> Image.Image:
    """A 32x32 picture with structure (so a wrong strength or a wrong mask shows in the pixels)."""
    y, x = np.mgrid[0:32, 0:32]
    a = np.stack([x * 8, y * 8, ((x // 8 + y // 8) % 2) * 255], -1).astype(np.uint8)
    return Image.fromarray(a)


def test_webuiapi_img2img_equals_the_pipeline(server, reference):
    init = _init_image()
    r = server.api().img2img(images=[init], prompt=PROMPT, negative_prompt=NEGATIVE, denoising_strength=0.6,
                             sampler_name="DPM++ 2M", steps=4, cfg_scale=4.0, seed=5, **SIZE)
    want = reference(PROMPT, NEGATIVE, image=init, strength=0.6, sampler="dpmpp_2m", num_inference_steps=4,
                     guidance_scale=4.0, seed=5).images
    np.testing.assert_array_equal(pixels(r.images), pixels(want))
    assert r.info["denoising_strength"] == 0.6 and (r.info["width"], r.info["height"]) == (32, 32)
    assert "Denoising strength: 0.6" in r.info["infotexts"][0]
    # the strength mattered
    other = reference(PROMPT, NEGATIVE, image=init, strength=0.9, sampler="dpmpp_2m", num_inference_steps=4,
                      guidance_scale=4.0, seed=5).images
    assert not np.array_equal(pixels(r.images), pixels(other))
    # width/height resize the init image (resize_mode 0, "just resize"), like A1111
    r = server.api().img2img(images=[init], prompt=PROMPT, denoising_strength=0.5, steps=2, seed=5,
                             width=40, height=24)
    assert r.image.size == (40, 24) and r.info["ignored"].get("resize_mode") is None


def test_webuiapi_inpainting_keeps_the_unmasked_pixels(server, reference):
    init = _init_image()
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 4:20] = 255
    mask = Image.fromarray(m)
    r = server.api().img2img(images=[init], mask_image=mask, prompt=PROMPT, denoising_strength=1.0,
                             inpaint_full_res=False, mask_blur=0, inpainting_fill=1, sampler_name="DPM++ 2M",
                             steps=3, cfg_scale=4.0, seed=2, **SIZE)
    want = reference(PROMPT, image=init, strength=1.0, mask_image=mask, keep_unmasked=True, sampler="dpmpp_2m",
                     num_inference_steps=3, guidance_scale=4.0, seed=2).images
    got = pixels(r.images)[0]
    np.testing.assert_array_equal(got, pixels(want)[0])
    np.testing.assert_array_equal(got[m == 0], np.asarray(init)[m == 0])
    assert not np.array_equal(got[m == 255], np.asarray(init)[m == 255])
    assert r.info["ignored"] == {} or "inpainting_fill" not in r.info["ignored"]
    # inpaint_full_res (only_masked) and an inverted mask go through too; fill modes are reported
    r2 = server.post("img2img", json={"init_images": [_b64(init)], "mask": _b64(mask), "prompt": PROMPT,
                                      "inpainting_mask_invert": 1, "inpainting_fill": 0, "resize_mode": 2, "mask_blur": 0,
                                      "steps": 2, "seed": 2})
    assert r2.status_code == 200, r2.text
    info = info_of(r2)
    assert info["ignored"]["inpainting_fill"] == 0 and info["ignored"]["resize_mode"] == 2
    got2 = np.asarray(Image.open(io.BytesIO(base64.b64decode(r2.json()["images"][0]))).convert("RGB"))
    assert got2.shape == (32, 32, 3)
    np.testing.assert_array_equal(got2[m == 255], np.asarray(init)[m == 255])  # inverted: this part is kept


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_options_round_trip_switches_the_model(server, dirs):
    from latentdiff.pipelines import TextToImagePipeline

    api = server.api()
    start = api.util_get_current_model()
    titles = api.util_get_model_names()
    other = next(t for t in titles if t.startswith("tiny_b "))
    api.set_options({"sd_model_checkpoint": other})
    assert api.get_options()["sd_model_checkpoint"] == other
    r = api.txt2img(prompt=PROMPT, sampler_name="DDIM", steps=2, seed=0, eta=0.0, cfg_scale=3.0, **SIZE)
    want = TextToImagePipeline.from_pretrained(dirs["models"] / "tiny_b")(
        PROMPT, sampler="ddim", num_inference_steps=2, seed=0, eta=0.0, guidance_scale=3.0, height=32, width=32)
    np.testing.assert_array_equal(pixels(r.images), pixels(want.images))
    assert r.info["sd_model_name"] == "tiny_b"
    bad = server.post("options", json={"sd_model_checkpoint": "../../etc"})
    assert bad.status_code == 422 and "Unknown sd_model_checkpoint '../../etc'; choose one of" in bad.json()["detail"]
    api.util_set_model(start)  # webuiapi lower-cases and fuzzy-matches; the server matches case-insensitively
    assert api.util_get_current_model() == start


def test_png_info_and_from_png_read_a_server_image(server, tmp_path, capsys):
    from latentdiff.cli import main

    api = server.api()
    r = api.txt2img(prompt=PROMPT, negative_prompt="a, b: c", sampler_name="DPM++ 2M", steps=2, seed=11,
                    cfg_scale=3.5, **SIZE)
    p = api.png_info(r.image).json["parameters"]
    assert (p["Prompt"], p["Negative prompt"], p["Sampler"], p["Seed"], p["Steps"], p["CFG scale"]) == \
        (PROMPT, "a, b: c", "DPM++ 2M", "11", "2", "3.5")
    assert (p["Size-1"], p["Size-2"]) == ("32", "32")
    # our own chunk rides along, so `latentdiff generate --from-png` regenerates the image exactly
    png = tmp_path / "server.png"
    r.image.save(png, pnginfo=_pnginfo(r.image))
    assert main(["generate", "--from-png", str(png), "--out", str(tmp_path / "again")]) == 0
    [again] = [Path(x) for x in capsys.readouterr().out.split() if x.endswith(".png")]
    np.testing.assert_array_equal(pixels([Image.open(again)]), pixels(r.images))


def _pnginfo(image):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in image.info.items():
        if isinstance(v, str):
            info.add_text(k, v)
    return info


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker file


def test_a_pickled_model_is_never_unpickled(server, dirs, tmp_path):
    import pickle

    evil = dirs["models"] / "evil"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (evil / sub).mkdir(parents=True)
    (evil / "model_index.json").write_text("{}")
    marker = tmp_path / "unpickled"
    (evil / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(marker)))
    try:
        assert server.post("refresh-checkpoints").status_code == 200
        before = server.get("options").json()["sd_model_checkpoint"]
        r = server.post("options", json={"sd_model_checkpoint": "evil"})
        assert r.status_code == 422 and "pickled weights can run arbitrary code" in r.json()["detail"]
        assert not marker.exists()
        assert server.get("options").json()["sd_model_checkpoint"] == before  # the old model keeps serving
        assert server.post("txt2img", json={"prompt": PROMPT, "steps": 1, **SIZE}).status_code == 200
    finally:
        import shutil

        shutil.rmtree(evil)
        server.post("refresh-checkpoints")


def test_listings(server, dirs):
    api = server.api()
    from latentdiff.a1111 import A1111_SAMPLERS, A1111_SCHEDULERS

    assert [s["name"] for s in api.get_samplers()] == [s.name for s in A1111_SAMPLERS]
    assert [s["name"] for s in api.get_schedulers()] == [s.name for s in A1111_SCHEDULERS]
    assert {m["model_name"] for m in api.get_sd_models()} >= {"tiny_b", "pipe"}
    assert [x["name"] for x in api.get_loras()] == ["shiny"]  # escape.safetensors links outside: not listed
    assert api.get_embeddings() == {"loaded": {}, "skipped": {"style": {
        "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": 0}}}
    assert server.post("refresh-checkpoints").status_code == 200


# ----------------------------------------------------------------------------------------------
# Bad input: a 4xx with a one-line message, and the server keeps serving
# ----------------------------------------------------------------------------------------------

def _b64_png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()  # data-URL prefix allowed


BAD = [
    ("txt2img", b"{not json", 400, "request body is not valid JSON"),
    ("txt2img", {"steps": "ten"}, 422, "steps: Input should be a valid integer (got 'ten')"),
    ("txt2img", {"prompt": 3}, 422, "prompt: Input should be a valid string"),
    ("txt2img", [1, 2], 422, "Input should be a valid dictionary"),
    ("txt2img", {"steps": -1}, 422, "steps must be between 1 and 150, got -1"),
    ("txt2img", {"width": 8192, "height": 8192}, 422, "8192x8192 = 67108864 pixels exceeds this server's limit"),
    ("txt2img", {"width": 33, "height": 32}, 422, "height and width must be positive multiples of the VAE factor"),
    ("txt2img", {"batch_size": 4, "n_iter": 3}, 422, "batch_size × n_iter = 12 images exceeds"),
    ("txt2img", {"cfg_scale": -2}, 422, "cfg_scale must be a finite number >= 0"),
    ("txt2img", {"sampler_name": "Euler b"}, 422, "Unknown sampler 'Euler b'; choose one of Euler, Euler a"),
    ("txt2img", {"scheduler": "kerras"}, 422, "Unknown scheduler 'kerras'; choose one of automatic"),
    ("txt2img", {"prompt": "<lora:../shiny:1>"}, 422, "LoRA name '../shiny' is not a plain name"),
    ("txt2img", {"prompt": "<lora:/etc/passwd:1>"}, 422, "LoRA name '/etc/passwd' is not a plain name"),
    ("txt2img", {"prompt": "<lora:escape:1>"}, 422, "Unknown LoRA 'escape' in the prompt; --lora-dir has shiny"),
    ("txt2img", {"prompt": "<lora:shiny:lots>"}, 422, "weight must be a number"),
    ("txt2img", {"prompt": "x" * (2**20 + 10)}, 413, "request body exceeds this server's limit"),
    ("png-info", {"image": "not base64 at all!"}, 422, "image is not valid base64"),
    ("png-info", {"image": base64.b64encode(b"plain text").decode()}, 422, "is not an image PIL can read"),
    ("png-info", {}, 422, "image: Field required"),
    ("options", {"sd_model_checkpoint": 5}, 422, "sd_model_checkpoint must be a model title string"),
    ("img2img", {"init_images": []}, 422, "init_images must hold at least one base64-encoded image"),
    ("img2img", {"prompt": PROMPT}, 422, "init_images must hold at least one"),
    ("img2img", {"init_images": ["not base64 at all!"]}, 422, "init_images[0] is not valid base64"),
    ("img2img", {"init_images": [base64.b64encode(b"plain text").decode()]}, 422,
     "init_images[0] decodes from base64 but is not an image"),
    ("img2img", {"init_images": [_b64_png(32, 32)], "mask": _b64_png(16, 32)}, 422,
     "mask is 16x32 px but init_images[0] is 32x32; they must have the same size"),
    ("img2img", {"init_images": [_b64_png(32, 32)], "denoising_strength": 1.5}, 422,
     "denoising_strength must be a number in [0, 1]"),
    ("img2img", {"init_images": [_b64_png(32, 32)], "denoising_strength": -0.1}, 422,
     "denoising_strength must be a number in [0, 1]"),
]


@pytest.mark.parametrize("path, body, status, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_with_a_message(server, path, body, status, message):
    kw = {"data": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = server.post(path, **kw)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert message in detail
    assert "\n" not in detail and "Traceback" not in r.text
    ok = server.post("txt2img", json={"prompt": PROMPT, "steps": 1, **SIZE})
    assert ok.status_code == 200 and len(ok.json()["images"]) == 1


def test_a_chunked_body_over_the_limit_is_413_too(server):
    def chunks():  # no Content-Length: the limit must hold while reading
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"x" * 16384
        yield b'"}'

    r = server.post("txt2img", data=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body exceeds this server's limit" in r.json()["detail"]
    assert server.post("txt2img", json={"prompt": PROMPT, "steps": 1, **SIZE}).status_code == 200


def test_internal_errors_are_logged_not_sent(server, monkeypatch, caplog):
    def boom(plan):
        raise RuntimeError("secret internal state /home/me/.cache")

    monkeypatch.setattr(server.app.state.engine, "txt2img", boom)
    r = server.post("txt2img", json={"prompt": PROMPT})
    assert r.status_code == 500
    assert r.json()["detail"] == "internal server error; the server log has the details"
    assert "secret" not in r.text
    assert any("secret internal state" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)


# ----------------------------------------------------------------------------------------------
# Progress, interrupt, the bounded queue
# ----------------------------------------------------------------------------------------------


def _slow_unet(monkeypatch, server, seconds: float):
    unet = server.app.state.engine.pipe.unet
    forward = unet.forward

    def slow(*a, **kw):
        time.sleep(seconds)
        return forward(*a, **kw)

    monkeypatch.setattr(unet, "forward", slow)


def test_progress_shows_a_preview_and_interrupt_stops_the_run(server, monkeypatch):
    _slow_unet(monkeypatch, server, 0.02)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(server.post, "txt2img", json={"prompt": PROMPT, "steps": 150, "sampler_name": "DDIM",
                                                             **SIZE})
        for _ in range(1000):
            p = server.get("progress").json()
            if p["state"]["sampling_step"] >= 2 and p["current_image"]:
                break
            time.sleep(0.01)
        assert p["state"]["job"] == "txt2img" and p["state"]["sampling_steps"] == 150 and 0 < p["progress"] < 1
        preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
        assert preview.size == (32, 32)
        assert server.post("interrupt").json() == {}
        r = running.result(timeout=120)
    assert r.status_code == 200
    info = info_of(r)
    assert info["interrupted"] is True and len(r.json()["images"]) == 1
    assert "Interrupted: True" in info["infotexts"][0]
    after = server.get("progress").json()
    assert after["state"]["job"] == "" and after["progress"] == 0.0
    assert after["state"]["sampling_step"] < 150  # it stopped early
    # the next request is not interrupted
    assert info_of(server.post("txt2img", json={"prompt": PROMPT, "steps": 2, **SIZE}))["interrupted"] is False


def test_a_full_queue_answers_503_with_retry_after(server):
    worker = server.app.state.worker
    gate = threading.Event()
    blockers = [worker.submit(gate.wait)]  # the running job
    try:
        for _ in range(500):
            if worker.queue.qsize() == 0 and blockers[0].running():
                break
            time.sleep(0.01)
        blockers += [worker.submit(gate.wait) for _ in range(worker.queue.maxsize)]  # the queue is full
        r = server.post("txt2img", json={"prompt": PROMPT, "steps": 1, **SIZE})
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert "the server is busy" in r.json()["detail"]
    finally:
        gate.set()
    for b in blockers:
        b.result(timeout=30)
    assert server.post("txt2img", json={"prompt": PROMPT, "steps": 1, **SIZE}).status_code == 200


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_load_8_clients_x_10_requests(server, dirs):
    """Every request gets an image or a 503; nothing crashes; --outputs holds exactly the images sent,
    each a complete PNG, and no temporary file."""
    outputs = dirs["outputs"]
    before = set(outputs.glob("*"))
    rss0 = _rss_bytes()

    def client(i: int) -> list[tuple[int, int]]:
        results = []
        for j in range(10):
            r = server.post("txt2img", json={"prompt": f"{PROMPT} {i}", "seed": 100 * i + j, "steps": 2, **SIZE})
            if r.status_code == 200:
                results.append((200, len(r.json()["images"])))
            else:
                assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
                results.append((503, 0))
        return results

    with ThreadPoolExecutor(8) as pool:
        results = [x for xs in pool.map(client, range(8)) for x in xs]
    ok = [n for s, n in results if s == 200]
    assert len(results) == 80 and ok and all(n == 1 for n in ok)
    new = set(outputs.glob("*")) - before
    assert all(p.suffix == ".png" and not p.name.startswith(".") for p in new), sorted(new)
    assert len(new) == len(ok)
    for p in new:
        with Image.open(p) as im:
            im.load()  # a truncated PNG raises here
    assert server.thread.is_alive() and server.app.state.worker.thread.is_alive()
    # a leak would grow with each of the 80 requests; 256 MiB is far above the tiny model's working set
    assert _rss_bytes() - rss0 < 256 * 2**20


# ----------------------------------------------------------------------------------------------
# Security defaults
# ----------------------------------------------------------------------------------------------


def test_api_auth(tiny_pipeline_dir):
    s = LiveServer(ServeConfig(model=str(tiny_pipeline_dir), auth=("alice", "s3cret")))
    try:
        assert s.get("options").status_code == 401
        assert requests.get(s.url + "/", timeout=30).status_code == 401  # the UI too
        assert s.get("options", auth=("alice", "wrong")).status_code == 401
        api = s.api(username="alice", password="s3cret")
        assert api.get_options()["sd_model_checkpoint"].startswith("pipe ")
        assert len(api.txt2img(prompt=PROMPT, sampler_name="DDIM", steps=1, **SIZE).images) == 1
    finally:
        s.close()


@pytest.mark.parametrize("argv, message", [
    (["--listen"], "binding 0.0.0.0 exposes the server beyond this machine; add --api-auth USER:PASS"),
    (["--host", "192.168.1.5"], "binding 192.168.1.5 exposes the server"),
    (["--listen", "--api-auth", "alice"], "--api-auth must be USER:PASS"),
    (["--lora-dir", "/nonexistent/loras"], "--lora-dir /nonexistent/loras is not a folder"),
    (["--max-batch", "0"], "--max-batch must be >= 1"),
])
def test_serve_flags_are_checked_before_anything_loads(argv, message, capsys):
    from latentdiff.cli import main

    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_taken_port_is_a_clear_error(capsys):
    from latentdiff.cli import main
    from latentdiff.server import bind

    taken = bind("127.0.0.1", 0)
    try:
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
        assert "cannot bind 127.0.0.1:" in capsys.readouterr().err
    finally:
        taken.close()


def test_exposure_is_allowed_with_auth_or_insecure():
    from latentdiff.server import config_from_args, serve_parser

    config, host = config_from_args(serve_parser().parse_args(["--listen", "--api-auth", "alice:pw"]))
    assert host == "0.0.0.0" and config.auth == ("alice", "pw")
    assert config_from_args(serve_parser().parse_args(["--listen", "--insecure"]))[0].auth is None
    assert config_from_args(serve_parser().parse_args([]))[1] == "127.0.0.1"


def test_serve_help_has_examples(capsys):
    from latentdiff.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "latentdiff serve --listen --api-auth" in out and "/sdapi/v1/txt2img" in out
