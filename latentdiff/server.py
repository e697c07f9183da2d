"""`latentdiff serve`: an AUTOMATIC1111-compatible HTTP API (``/sdapi/v1/...``) and a web UI.

One process keeps the model loaded. Requests are validated in the web handlers (cheap, so bad input
never waits in the queue) and then run one at a time by a single worker thread that owns the pipeline;
the queue in front of it is bounded, and a full queue answers 503 with ``Retry-After``.

Request and response JSON follow A1111's ``modules/api/models.py`` and ``modules/api/api.py``, so the
``webuiapi`` client and the Krita/GIMP/chat-bot integrations that speak that API work unchanged. Fields
we do not implement are accepted and listed under ``"ignored"`` in the response ``info``; A1111 names
are translated through the tables in :mod:`latentdiff.a1111`.

Needs the ``serve`` extra (fastapi, uvicorn)::

    pip install 'latentdiff[serve]'
    latentdiff serve --model emoji --lora-dir loras/ --outputs outputs/
"""

# no `from __future__ import annotations`: FastAPI reads the request models (defined inside create_app,
# so that importing this module needs no fastapi) from the handlers' real annotations

import argparse
import asyncio
import base64
import binascii
import io
import ipaddress
import json
import logging
import math
import queue
import random
import re
import secrets
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from latentdiff import a1111
from latentdiff._version import __version__
from latentdiff.fs import LORA_WEIGHT_NAME, check_plain_name, file_sha256, is_inside

logger = logging.getLogger("latentdiff.server")

VERSION = f"latentdiff {__version__}"
WEBUI_FILE = Path(__file__).parent / "webui" / "index.html"
LOOPBACK_NAMES = ("localhost",)

SERVE_HELP_EPILOG = """\
endpoints (A1111's /sdapi/v1 API; http://HOST:PORT/openapi.json lists them all):
  POST /sdapi/v1/txt2img       generate (prompt, negative_prompt, sampler_name, scheduler, steps,
                               cfg_scale, width, height, seed, batch_size, n_iter, eta, <lora:name:w>)
  GET  /sdapi/v1/samplers | schedulers | sd-models | loras | embeddings | options | progress
  POST /sdapi/v1/options       {"sd_model_checkpoint": NAME} switches the model
  POST /sdapi/v1/png-info | interrupt | refresh-checkpoints | refresh-loras
  POST /sdapi/v1/img2img       txt2img's fields + init_images, denoising_strength, mask, mask_blur,
                               inpainting_mask_invert, inpaint_full_res(_padding)
  GET  /                       the web UI

examples:
  latentdiff serve                                   # emoji model on http://127.0.0.1:7860/
  latentdiff serve --lora-dir loras/ --outputs outputs/
  latentdiff serve --models-dir runs/ --model runs/emoji/final --port 0   # 0 picks a free port
  latentdiff serve --listen --api-auth alice:s3cret  # all interfaces, HTTP basic auth
  python -c "import webuiapi; print(webuiapi.WebUIApi(port=7860).txt2img(prompt='red apple', \\
      sampler_name='DDIM', steps=20, width=64, height=64).image)"
"""


# ----------------------------------------------------------------------------------------------
# Errors, limits and folders
# ----------------------------------------------------------------------------------------------


class ServeError(Exception):
    """An error with an HTTP status; its message goes to the client as ``detail``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Interrupted(Exception):
    """Raised from the sampler callback when /sdapi/v1/interrupt was called."""


@dataclass
class Limits:
    max_pixels: int = 1024 * 1024  # width × height of one image
    max_batch: int = 8  # batch_size × n_iter of one request
    max_steps: int = 150  # A1111's UI maximum
    max_body_bytes: int = 16 * 2**20
    queue_size: int = 4  # requests waiting behind the running one; more get 503


@dataclass
class ModelEntry:
    """A model the API may load: a built-in name or a diffusers folder inside --models-dir."""

    name: str
    source: str  # what TextToImagePipeline.from_pretrained gets
    path: Path
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        """sha256 of the U-Net weights (A1111 hashes the checkpoint file; ours are folders)."""
        if self._sha256 is None:
            self._sha256 = file_sha256(*sorted((self.path / "unet").glob("*.safetensors")))
        return self._sha256

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"

    def matches(self, name: str) -> bool:
        """A1111 accepts a checkpoint's title, name, short hash or sha256 (we compare case-insensitively:
        webuiapi's util_set_model lower-cases the name)."""
        n = name.strip().lower()
        return n in (self.title.lower(), self.name.lower(), self.short_hash, self.sha256)


def discover_models(default: str, models_dir: Path | None) -> list[ModelEntry]:
    """The built-in models, the --model given, and every diffusers folder directly inside --models-dir."""
    from latentdiff.io import BUILTIN_MODELS, is_repo_id, resolve_model_dir

    entries = [ModelEntry(n, n, p) for n, p in BUILTIN_MODELS.items() if (p / "model_index.json").exists()]
    if default not in BUILTIN_MODELS:
        path = resolve_model_dir(default)
        # a Hub repo keeps its id as name and source (its cache folder is named after a commit)
        entries.append(ModelEntry(default, default, path) if is_repo_id(default) else
                       ModelEntry(path.name, str(path), path))
    if models_dir is not None:
        for child in sorted(models_dir.iterdir()):
            if (child / "model_index.json").is_file() and is_inside(child, models_dir):
                if not any(e.path.resolve() == child.resolve() for e in entries):
                    entries.append(ModelEntry(child.name, str(child), child))
    names = [e.name for e in entries]
    for e in entries:  # disambiguate two folders called "final"
        if names.count(e.name) > 1:
            e.name = f"{e.path.parent.name}/{e.name}"
    return entries


def discover_loras(lora_dir: Path | None) -> dict[str, Path]:
    """LoRA name -> file: ``NAME.safetensors`` anywhere under --lora-dir, or a folder NAME holding
    ``pytorch_lora_weights.safetensors`` (what ``latentdiff train lora`` writes). Links out are skipped."""
    if lora_dir is None:
        return {}
    found: dict[str, Path] = {}
    for p in sorted(lora_dir.rglob("*.safetensors")):
        if not is_inside(p, lora_dir):
            logger.warning("LoRA %s links outside --lora-dir %s; skipped", p, lora_dir)
            continue
        name = p.parent.name if p.name == LORA_WEIGHT_NAME and p.parent != lora_dir else p.stem
        found.setdefault(name, p)
    return found


def discover_embeddings(embeddings_dir: Path | None) -> list[str]:
    if embeddings_dir is None:
        return []
    return sorted(p.stem for p in embeddings_dir.rglob("*") if p.suffix in (".safetensors", ".pt", ".bin")
                  and is_inside(p, embeddings_dir))


# ----------------------------------------------------------------------------------------------
# The worker: one thread, one pipeline, a bounded queue
# ----------------------------------------------------------------------------------------------


@dataclass
class _Job:
    fn: Callable[[], object]
    future: Future = field(default_factory=Future)


class Worker:
    """Runs jobs one at a time on its own thread; at most ``queue_size`` wait behind the running one."""

    def __init__(self, queue_size: int):
        self.queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self.seconds_per_job = 1.0  # running mean, for Retry-After
        self.thread = threading.Thread(target=self._loop, name="latentdiff-worker", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[[], object]) -> Future:
        job = _Job(fn)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            wait = max(1, math.ceil(self.seconds_per_job * (self.queue.maxsize + 1)))
            raise ServeError(503, f"the server is busy: {self.queue.maxsize} requests are already waiting; "
                                  f"retry in {wait} s", headers={"Retry-After": str(wait)}) from None
        return job.future

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            t0 = time.perf_counter()
            try:
                job.future.set_result(job.fn())
            except BaseException as e:  # handed to the waiting request
                job.future.set_exception(e)
            self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.perf_counter() - t0)

    def stop(self) -> None:
        """Cancel what waits, let the running job finish (up to a minute), end the thread."""
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
        self.queue.put(None)
        self.thread.join(timeout=60)


@dataclass
class Progress:
    """What /sdapi/v1/progress reports (A1111's ``shared.state``)."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    job_timestamp: str = "0"
    started: float = 0.0
    interrupted: bool = False
    denoised: object = None  # latest x0 prediction (B, C, h, w) of the running batch
    preview: tuple | None = None  # (job_timestamp, job_no, step, base64 PNG) cache


@dataclass
class Txt2ImgPlan:
    """A validated txt2img request; None means "the loaded model's default", resolved in the worker."""

    prompt: str  # as sent (with <lora:...> tags; goes into the infotext like A1111's)
    text: str  # what the text encoder sees
    negative: str
    loras: list[tuple[str, Path, float]]
    sampler: a1111.A1111Sampler | None
    scheduler: a1111.A1111Scheduler
    steps: int | None
    cfg_scale: float | None
    width: int | None
    height: int | None
    batch_size: int
    n_iter: int
    seed: int
    eta: float | None
    save: bool
    ignored: dict
    # img2img: the pipeline's image arguments (image, strength, mask_image, mask_blur, only_masked,
    # only_masked_padding, keep_unmasked); the size then comes from the image, not width/height
    init: dict | None = None


class Engine:
    """The loaded pipeline and everything that touches it. Its methods run on the worker thread only
    (except :meth:`preview`, which decodes under ``vae_lock``)."""

    def __init__(self, entry: ModelEntry, device: str, outputs: Path | None, limits: Limits):
        self.device, self.outputs, self.limits = device, outputs, limits
        self.progress = Progress()
        self.interrupt = threading.Event()
        self.vae_lock = threading.Lock()
        self.pipe = None
        self.entry: ModelEntry | None = None
        self.adapters: dict[str, str] = {}  # LoRA name -> adapter loaded in self.pipe
        self._counter = self._first_free_counter()
        self.load_model(entry)

    def _first_free_counter(self) -> int:
        if self.outputs is None:
            return 0
        self.outputs.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in self.outputs.glob("*.png") if (m := re.match(r"(\d{5,})-", p.name))]
        return max(numbers, default=-1) + 1

    def load_model(self, entry: ModelEntry) -> None:
        from latentdiff.pipelines import TextToImagePipeline

        logger.info("Loading model %s from %s", entry.name, entry.path)
        # allow_pickle stays False: the API never unpickles anything
        pipe = TextToImagePipeline.from_pretrained(entry.source, device=self.device)
        self.pipe, self.entry, self.adapters = pipe, entry, {}
        _ = entry.sha256  # hash once, off the request path of /sd-models

    # ------------------------------------------------------------------ LoRA

    def _apply_loras(self, loras: list[tuple[str, Path, float]]) -> None:
        """Make exactly the prompt's LoRAs active at their weights (loaded once, then cached)."""
        pipe = self.pipe
        for name, path, _ in loras:
            if name not in self.adapters:
                adapter = re.sub(r"[^\w-]", "_", name)
                while adapter in pipe.list_loras():
                    adapter += "_"
                self.adapters[name] = pipe.load_lora(path, adapter_name=adapter)
        if not self.adapters:
            return
        if not loras:
            pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([self.adapters[n] for n, _, _ in loras], [w for _, _, w in loras])

    # ------------------------------------------------------------------ txt2img

    def txt2img(self, plan: Txt2ImgPlan) -> dict:
        import torch

        pipe, entry, d = self.pipe, self.entry, self.pipe.defaults
        sampler = plan.sampler or a1111.sampler_for(d.sampler)
        steps = d.num_inference_steps if plan.steps is None else plan.steps
        cfg = d.guidance_scale if plan.cfg_scale is None else plan.cfg_scale
        if plan.init is None:
            width = plan.width or pipe.default_size
            height = plan.height or pipe.default_size
        else:  # the handler resized the image to the request's size; the pipeline trims it to the VAE factor
            f = 1 if plan.init.get("only_masked") else pipe.vae_scale_factor  # only_masked pastes back at full size
            width, height = plan.width - plan.width % f, plan.height - plan.height % f
        if width * height > self.limits.max_pixels:
            raise ServeError(422, f"{width}x{height} = {width * height} pixels exceeds this server's limit of "
                                  f"{self.limits.max_pixels} (--max-pixels)")
        kwargs = {**sampler.kwargs, **plan.scheduler.kwargs}
        ignored = dict(plan.ignored)
        eta = None
        if kwargs["sampler"] == "ddim":
            eta = d.eta if plan.eta is None else plan.eta  # the η the pipeline uses, so the infotext shows it
        elif plan.eta:
            ignored["eta"] = plan.eta  # η is DDIM's; A1111 ignores it for non-ancestral samplers too
        self._apply_loras(plan.loras)

        p = self.progress
        p.job, p.job_count, p.job_no, p.sampling_step, p.sampling_steps = \
            "txt2img" if plan.init is None else "img2img", plan.n_iter, 0, 0, steps
        p.job_timestamp, p.started, p.interrupted, p.denoised = datetime.now().strftime("%Y%m%d%H%M%S"), \
            time.time(), False, None
        self.interrupt.clear()

        def callback(state: dict) -> None:
            p.sampling_step, p.denoised = state["i"] + 1, state["denoised"]
            if self.interrupt.is_set():
                raise _Interrupted

        spacing = kwargs.get("timestep_spacing") or pipe.default_timestep_spacing
        size = dict(height=height, width=width) if plan.init is None else plan.init
        images, params = [], []
        try:
            for k in range(plan.n_iter):
                p.job_no, p.sampling_step = k, 0
                seeds = [plan.seed + k * plan.batch_size + j for j in range(plan.batch_size)]
                try:
                    out = pipe(plan.text, plan.negative, num_inference_steps=steps, guidance_scale=cfg,
                               num_images_per_prompt=plan.batch_size, seed=seeds, eta=eta, callback=callback,
                               **size, **kwargs)
                    images += out.images
                    params += out.parameters
                except _Interrupted:
                    # like A1111: the interrupted batch comes back as its latest x0 prediction
                    p.interrupted = True
                    with self.vae_lock, torch.no_grad():
                        x = pipe.decode_latents(p.denoised).permute(0, 2, 3, 1).cpu().numpy()
                    from PIL import Image

                    images += [Image.fromarray((im * 255).round().astype("uint8")) for im in x]
                    params += [{"prompt": plan.text, "negative_prompt": plan.negative, "seed": s,
                                "sampler": kwargs["sampler"], "steps": steps, "eta": eta,
                                "guidance_scale": cfg, "height": height, "width": width,
                                "model": entry.source, "timestep_spacing": spacing} for s in seeds]
                    break
        finally:
            p.job, p.job_count, p.denoised = "", 0, None
        return self._finish(plan, images, params, dict(sampler=sampler, steps=steps, cfg=cfg, width=width,
                                                       height=height, eta=eta, ignored=ignored))

    def _finish(self, plan: Txt2ImgPlan, images: list, params: list[dict], r: dict) -> dict:
        """PNG bytes with both text chunks for each image, saved atomically into --outputs."""
        from PIL.PngImagePlugin import PngInfo

        from latentdiff.cli import PNG_KEY
        from latentdiff.images import save_png_atomic

        entry = self.entry
        lora_specs = [f"{path}:{w:g}" for _, path, w in plan.loras]
        infotexts, pngs, saved = [], [], []
        for image, prm in zip(images, params):
            fields = {
                "Steps": r["steps"], "Sampler": r["sampler"].name,
                "Schedule type": None if plan.scheduler.name == "automatic" else plan.scheduler.label,
                "CFG scale": r["cfg"], "Seed": prm["seed"], "Size": f"{r['width']}x{r['height']}",
                "Model hash": entry.short_hash, "Model": entry.name,
                "Denoising strength": None if plan.init is None else plan.init["strength"],
                "Mask blur": None if plan.init is None or plan.init.get("mask_image") is None
                else f"{plan.init['mask_blur']:g}",
                "Eta DDIM": prm["eta"] if r["sampler"].kwargs["sampler"] == "ddim" else None,
                "Lora hashes": ", ".join(f"{n}: {_file_hash(path)}" for n, path, _ in plan.loras) or None,
                "Interrupted": "True" if self.progress.interrupted else None,
                "Version": VERSION,
            }
            infotext = a1111.format_infotext(plan.prompt, plan.negative, fields)
            ours = {**prm, "guidance_rescale": 0.0, "lora": lora_specs, "model": entry.source,
                    "classifier": None, "class_label": None, "classifier_scale": 1.0}
            info = PngInfo()
            info.add_text(a1111.INFOTEXT_KEY, infotext)
            info.add_text(PNG_KEY, json.dumps(ours))
            buf = io.BytesIO()
            image.save(buf, format="PNG", pnginfo=info)
            pngs.append(buf.getvalue())
            infotexts.append(infotext)
            if plan.save and self.outputs is not None:
                path = self.outputs / f"{self._counter:05d}-{prm['seed']}.png"
                self._counter += 1
                save_png_atomic(image, path, pnginfo=info)
                saved.append(str(path))
        seeds = [prm["seed"] for prm in params]
        n = len(images)
        info = {
            "prompt": plan.prompt, "all_prompts": [plan.prompt] * n,
            "negative_prompt": plan.negative, "all_negative_prompts": [plan.negative] * n,
            "seed": seeds[0] if seeds else plan.seed, "all_seeds": seeds,
            "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0,
            "width": r["width"], "height": r["height"], "sampler_name": r["sampler"].name,
            "scheduler": plan.scheduler.name, "cfg_scale": r["cfg"], "steps": r["steps"], "eta": r["eta"],
            "batch_size": plan.batch_size, "n_iter": plan.n_iter, "restore_faces": False,
            "sd_model_name": entry.name, "sd_model_hash": entry.short_hash,
            "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": None if plan.init is None else plan.init["strength"],
            "extra_generation_params": {"Lora weights": {name: w for name, _, w in plan.loras}} if plan.loras else {},
            "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
            "job_timestamp": self.progress.job_timestamp, "clip_skip": 1,
            "is_using_inpainting_conditioning": False, "version": VERSION,
            "interrupted": self.progress.interrupted, "ignored": r["ignored"], "saved": saved,
        }
        return {"pngs": pngs, "info": info}

    # ------------------------------------------------------------------ progress preview

    def preview(self) -> str | None:
        """The running batch's first latest-x0 prediction as a base64 PNG (decoded once per step)."""
        p, pipe = self.progress, self.pipe
        x = p.denoised
        if x is None:
            return None
        key = (p.job_timestamp, p.job_no, p.sampling_step)
        if p.preview and p.preview[0] == key:
            return p.preview[1]
        import torch
        from PIL import Image

        with self.vae_lock, torch.no_grad():
            im = pipe.decode_latents(x[:1])[0].permute(1, 2, 0).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray((im * 255).round().astype("uint8")).save(buf, format="PNG")
        b64 = base64.b64encode(buf.getvalue()).decode()
        p.preview = (key, b64)
        return b64


_HASHES: dict[tuple, str] = {}


def _file_hash(path: Path) -> str:
    """A1111's short LoRA hash: the first 12 hex digits of the file's sha256 (cached by size and mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)[:12]
    return _HASHES[key]


# ----------------------------------------------------------------------------------------------
# Request validation (in the handler, before anything is queued)
# ----------------------------------------------------------------------------------------------

# A1111 txt2img fields we do not implement, with the values that mean "off". Any other value is
# accepted and reported under info["ignored"]; so is every field A1111 does not have.
NEUTRAL = {
    "enable_hr": (False, None), "styles": ([], None), "subseed_strength": (0, None),
    "seed_resize_from_h": (-1, 0, None), "seed_resize_from_w": (-1, 0, None),
    "restore_faces": (False, None), "tiling": (False, None), "do_not_save_grid": (False, True, None),
    "s_churn": (0, None), "s_tmax": (0, None), "s_tmin": (0, None), "s_noise": (1, None),
    "s_min_uncond": (0, None), "override_settings": ({}, None),
    "override_settings_restore_afterwards": (True, False, None), "script_name": (None, ""),
    "script_args": ([], None), "alwayson_scripts": ({}, None), "refiner_checkpoint": (None, ""),
    "refiner_switch_at": (None, 0), "disable_extra_networks": (False, None), "comments": ({}, None),
    "firstpass_image": (None, ""), "infotext": (None, ""), "force_task_id": (None, ""),
    "sampler_index": None,  # deprecated alias of sampler_name: used only when sampler_name is absent
    "subseed": None,  # meaningless while subseed_strength is 0
}
# A1111 img2img fields we do not implement (beyond txt2img's), with the values that mean "off"
IMG2IMG_NEUTRAL = {
    **NEUTRAL, "image_cfg_scale": None,  # instruct-pix2pix models only
    "initial_noise_multiplier": (1, None), "include_init_images": (False, None), "mask_round": (True, None),
    "latent_mask": (None, ""),
}
# only meaningful with enable_hr (which is reported itself when true)
HIRES_FIELDS = ("denoising_strength", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
                "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
                "hr_scheduler", "hr_prompt", "hr_negative_prompt", "hr_cfg", "hr_distilled_cfg",
                "hr_additional_modules")


def ignored_fields(extra: dict, neutral: dict = NEUTRAL) -> dict:
    out = {}
    hires = bool(extra.get("enable_hr")) and neutral is NEUTRAL
    for k, v in extra.items():
        if k in HIRES_FIELDS and neutral is NEUTRAL:
            if hires:
                out[k] = v
        elif k in neutral:
            if neutral[k] is not None and v not in neutral[k]:
                out[k] = v
        else:
            out[k] = v
    if extra.get("subseed_strength"):
        out["subseed"] = extra.get("subseed", -1)
    return out


def _int_range(name: str, value: int | None, lo: int, hi: int, hint: str = "") -> None:
    if value is not None and not lo <= value <= hi:
        raise ServeError(422, f"{name} must be between {lo} and {hi}, got {value}{hint}")


def decode_base64_image(data: str, what: str = "image"):
    """A PIL image from base64 (optionally a ``data:image/png;base64,`` URL); 422 naming the field."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str) or not data:
        raise ServeError(422, f"{what} must be a base64-encoded PNG or JPEG string")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(422, f"{what} is not valid base64; send the image file's bytes base64-encoded") from None
    try:
        return Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise ServeError(422, f"{what} decodes from base64 but is not an image PIL can read (PNG, JPEG, WebP)") \
            from None


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


@dataclass
class ServeConfig:
    model: str = "emoji"
    models_dir: Path | None = None
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    outputs: Path | None = None
    device: str = "cpu"
    auth: tuple[str, str] | None = None
    limits: Limits = field(default_factory=Limits)


class _Guard:
    """ASGI middleware in front of everything: HTTP basic auth (when configured) and the body-size limit.
    The body is read here, up to the limit, and replayed to the app, so an oversized upload is refused
    with 413 before it is parsed, whether or not it declares a Content-Length."""

    def __init__(self, app, auth: tuple[str, str] | None, max_body: int):
        self.app, self.auth, self.max_body = app, auth, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.auth is not None and not self._authorized(headers.get(b"authorization", b"")):
            return await _send_json(send, 401, {"error": "Unauthorized", "detail": "this server needs HTTP basic "
                                    "auth (the --api-auth user and password)"},
                                    [(b"www-authenticate", b'Basic realm="latentdiff"')])
        too_big = {"error": "PayloadTooLarge", "detail": f"request body exceeds this server's limit of "
                   f"{self.max_body} bytes (--max-body-mb)"}
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await _send_json(send, 413, too_big)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _send_json(send, 413, too_big)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, value = header.decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return False
        # both compared, constant time, so timing does not tell which one was wrong
        ok_user = secrets.compare_digest(user.encode(), self.auth[0].encode())
        ok_password = secrets.compare_digest(password.encode(), self.auth[1].encode())
        return ok_user and ok_password


async def _send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def create_app(config: ServeConfig):
    """The FastAPI app with the model loaded (takes the model's load time). ``app.state.engine`` and
    ``app.state.worker`` are the generation side; ``app.state.worker.stop()`` ends the worker thread."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict

    limits = config.limits
    models = discover_models(config.model, config.models_dir)
    initial = next(e for e in models if e.source == config.model or str(e.path) == str(config.model)
                   or e.name == config.model)
    engine = Engine(initial, config.device, config.outputs, limits)
    worker = Worker(limits.queue_size)

    app = FastAPI(title="latentdiff", version=__version__, description="A1111-compatible /sdapi/v1 API")
    app.add_middleware(_Guard, auth=config.auth, max_body=limits.max_body_bytes)
    app.state.engine, app.state.worker, app.state.models = engine, worker, models

    class Txt2ImgRequest(BaseModel):
        """The fields we implement; everything else A1111 (or any client) sends lands in ``model_extra``."""

        model_config = ConfigDict(extra="allow", strict=True)
        prompt: str = ""
        negative_prompt: str = ""
        seed: int = -1
        sampler_name: str | None = None
        sampler_index: str | None = None
        scheduler: str | None = None
        batch_size: int = 1
        n_iter: int = 1
        steps: int | None = None
        cfg_scale: float | None = None
        width: int | None = None
        height: int | None = None
        eta: float | None = None
        send_images: bool = True
        save_images: bool = False
        do_not_save_samples: bool = False

    class Img2ImgRequest(Txt2ImgRequest):
        """A1111's StableDiffusionImg2ImgProcessingAPI: txt2img's fields plus the image ones (A1111's
        defaults); width/height default to the first init image's size."""

        init_images: list[str] | None = None
        denoising_strength: float = 0.75
        mask: str | None = None
        mask_blur: float = 4
        inpainting_mask_invert: int = 0
        inpaint_full_res: bool = True
        inpaint_full_res_padding: int = 0
        inpainting_fill: int = 0
        resize_mode: int = 0

    class PngInfoRequest(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)
        image: str

    # ---------------------------------------------------------------- errors: one line, no traceback

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        return JSONResponse({"error": _reason(e.status), "detail": e.message}, e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            ctx = next(err for err in errors if err.get("type") == "json_invalid").get("ctx", {})
            return JSONResponse({"error": "BadRequest", "detail": "request body is not valid JSON"
                                 + (f" ({ctx['error']})" if ctx.get("error") else "")}, 400)
        parts = []
        for err in errors:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
            parts.append(f"{loc}: {err.get('msg', 'invalid')}{got}")
        return JSONResponse({"error": "UnprocessableEntity", "detail": "; ".join(parts)}, 422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "InternalError", "detail": "internal server error; the server log has "
                             "the details"}, 500)

    async def run(fn: Callable[[], object]):
        """Queue ``fn`` on the worker and wait; the pipeline's own ValueErrors become 422."""
        future = worker.submit(fn)
        try:
            return await asyncio.wrap_future(future)
        except (ValueError, FileNotFoundError) as e:
            raise ServeError(422, str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def find_model(name: str) -> ModelEntry:
        for e in app.state.models:
            if e.matches(name):
                return e
        raise ServeError(422, f"Unknown sd_model_checkpoint {name!r}; choose one of "
                              f"{', '.join(e.title for e in app.state.models)} (see /sdapi/v1/sd-models)")

    def resolve_lora(name: str) -> Path:
        try:
            check_plain_name(name, "LoRA", "--lora-dir")
        except ValueError as e:
            raise ServeError(422, str(e)) from None
        loras = discover_loras(config.lora_dir)
        if name not in loras:
            where = "no --lora-dir is configured" if config.lora_dir is None else \
                f"--lora-dir has {', '.join(loras) or 'none'}"
            raise ServeError(422, f"Unknown LoRA {name!r} in the prompt; {where}")
        return loras[name]

    # ---------------------------------------------------------------- generation

    def make_plan(req: Txt2ImgRequest, neutral: dict = NEUTRAL, **init) -> Txt2ImgPlan:
        """Everything txt2img and img2img share, checked before anything is queued."""
        try:
            name = req.sampler_name or req.sampler_index
            sampler = a1111.find_sampler(name) if name else None
            scheduler = a1111.find_scheduler(req.scheduler or "automatic")
            tags = a1111.parse_prompt_tags(req.prompt)
        except ValueError as e:
            raise ServeError(422, str(e)) from None
        _int_range("steps", req.steps, 1, limits.max_steps, " (--max-steps)")
        _int_range("width", req.width, 1, limits.max_pixels)
        _int_range("height", req.height, 1, limits.max_pixels)
        if req.width and req.height and req.width * req.height > limits.max_pixels:
            raise ServeError(422, f"{req.width}x{req.height} = {req.width * req.height} pixels exceeds this "
                                  f"server's limit of {limits.max_pixels} (--max-pixels)")
        _int_range("batch_size", req.batch_size, 1, limits.max_batch, " (--max-batch)")
        _int_range("n_iter", req.n_iter, 1, limits.max_batch, " (--max-batch)")
        if req.batch_size * req.n_iter > limits.max_batch:
            raise ServeError(422, f"batch_size × n_iter = {req.batch_size * req.n_iter} images exceeds this "
                                  f"server's limit of {limits.max_batch} per request (--max-batch)")
        _int_range("seed", req.seed, -1, 2**63 - 1 - limits.max_batch, " (-1 = random)")
        for fname, v in (("cfg_scale", req.cfg_scale), ("eta", req.eta)):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ServeError(422, f"{fname} must be a finite number >= 0, got {v}")
        loras = [(n, resolve_lora(n), w) for n, w in tags.loras]
        for n, w in tags.loras:
            if not math.isfinite(w):
                raise ServeError(422, f"LoRA {n!r}: weight must be finite, got {w}")
        ignored = ignored_fields(req.model_extra or {}, neutral)
        if req.sampler_name is None and req.sampler_index is not None:
            ignored.pop("sampler_index", None)
        if tags.ignored:
            ignored["prompt tags"] = tags.ignored
        save = config.outputs is not None and not req.do_not_save_samples
        if req.save_images and config.outputs is None:
            ignored["save_images"] = "no --outputs folder is configured"
        seed = req.seed if req.seed != -1 else random.randrange(2**32 - 1)
        return Txt2ImgPlan(req.prompt, tags.prompt, req.negative_prompt, loras, sampler, scheduler, req.steps,
                           req.cfg_scale, init.get("width", req.width), init.get("height", req.height),
                           req.batch_size, req.n_iter, seed, req.eta, save, ignored, init.get("init"))

    async def generate(req: Txt2ImgRequest, plan: Txt2ImgPlan, parameters: dict) -> dict:
        result = await run(lambda: engine.txt2img(plan))
        images = [base64.b64encode(b).decode() for b in result["pngs"]] if req.send_images else []
        return {"images": images, "parameters": parameters, "info": json.dumps(result["info"])}

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(req: Txt2ImgRequest):
        return await generate(req, make_plan(req), req.model_dump())

    @app.post("/sdapi/v1/img2img")
    async def img2img(req: Img2ImgRequest):
        from PIL import Image, ImageOps

        if not req.init_images:
            raise ServeError(422, "init_images must hold at least one base64-encoded image (the picture to start from)")
        if not (math.isfinite(req.denoising_strength) and 0 <= req.denoising_strength <= 1):
            raise ServeError(422, f"denoising_strength must be a number in [0, 1] (0 = keep the image, "
                                  f"1 = ignore it), got {req.denoising_strength}")
        if not (math.isfinite(req.mask_blur) and req.mask_blur >= 0):
            raise ServeError(422, f"mask_blur must be a finite number of pixels >= 0, got {req.mask_blur}")
        _int_range("inpaint_full_res_padding", req.inpaint_full_res_padding, 0, limits.max_pixels)
        _int_range("inpainting_mask_invert", req.inpainting_mask_invert, 0, 1)
        extra_ignored = {}
        if len(req.init_images) > 1:
            extra_ignored["init_images"] = f"{len(req.init_images)} images sent; only the first is used"
        image = decode_base64_image(req.init_images[0], "init_images[0]").convert("RGB")
        mask = None
        if req.mask is not None:
            mask = decode_base64_image(req.mask, "mask")
            if mask.size != image.size:
                raise ServeError(422, f"mask is {mask.width}x{mask.height} px but init_images[0] is "
                                      f"{image.width}x{image.height}; they must have the same size")
            mask = mask.convert("L")
            if req.inpainting_mask_invert:
                mask = ImageOps.invert(mask)
        width, height = req.width or image.width, req.height or image.height
        if width * height > limits.max_pixels:
            raise ServeError(422, f"{width}x{height} = {width * height} pixels exceeds this server's limit of "
                                  f"{limits.max_pixels} (--max-pixels)")
        if (width, height) != image.size:  # resize_mode 0, "just resize" (A1111's LANCZOS)
            image = image.resize((width, height), Image.Resampling.LANCZOS)
            mask = mask.resize((width, height), Image.Resampling.LANCZOS) if mask is not None else None
        if req.resize_mode != 0:
            extra_ignored["resize_mode"] = req.resize_mode  # only 0 (just resize) is implemented
        init = {"image": image, "strength": req.denoising_strength}
        if mask is not None:
            if req.inpainting_fill != 1:  # latent blending always starts from the original's latents
                extra_ignored["inpainting_fill"] = req.inpainting_fill
            f = engine.pipe.vae_scale_factor
            init.update(mask_image=mask, mask_blur=float(req.mask_blur), only_masked=req.inpaint_full_res,
                        only_masked_padding=req.inpaint_full_res_padding,
                        # A1111 pastes the unmasked area back (its overlay); exact when no resize is needed
                        keep_unmasked=not req.inpaint_full_res and width % f == 0 and height % f == 0)
        plan = make_plan(req, IMG2IMG_NEUTRAL, init=init, width=width, height=height)
        plan.ignored.update(extra_ignored)
        parameters = req.model_dump()
        parameters["init_images"], parameters["mask"] = None, None  # as A1111 without include_init_images
        return await generate(req, plan, parameters)

    # ---------------------------------------------------------------- listings

    @app.get("/sdapi/v1/samplers")
    def samplers():
        return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in a1111.A1111_SAMPLERS]

    @app.get("/sdapi/v1/schedulers")
    def schedulers():
        return [{"name": s.name, "label": s.label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for s in a1111.A1111_SCHEDULERS]

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        return [{"title": e.title, "model_name": e.name, "hash": e.short_hash, "sha256": e.sha256,
                 "filename": str(e.path), "config": None} for e in app.state.models]

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints():
        app.state.models = discover_models(config.model, config.models_dir)
        return None

    @app.get("/sdapi/v1/loras")
    def loras():
        return [{"name": n, "alias": n, "path": str(p), "metadata": {}} for n, p in discover_loras(config.lora_dir).items()]

    @app.post("/sdapi/v1/refresh-loras")
    def refresh_loras():
        return None  # listed from the folder on every request

    @app.get("/sdapi/v1/embeddings")
    def embeddings():
        # textual inversion is not implemented: files are listed as skipped, never loaded
        return {"loaded": {}, "skipped": {n: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                              "shape": None, "vectors": 0}
                                          for n in discover_embeddings(config.embeddings_dir)}}

    @app.get("/sdapi/v1/sd-vae")
    def sd_vae():
        return []

    @app.get("/sdapi/v1/prompt-styles")
    def prompt_styles():
        return []

    @app.get("/sdapi/v1/scripts")
    def scripts():
        return {"txt2img": [], "img2img": []}

    # ---------------------------------------------------------------- options

    def current_options() -> dict:
        e = engine.entry
        return {"sd_model_checkpoint": e.title, "sd_checkpoint_hash": e.sha256, "samples_format": "png",
                "samples_save": config.outputs is not None, "outdir_samples": str(config.outputs or ""),
                "eta_ddim": engine.pipe.defaults.eta, "CLIP_stop_at_last_layers": 1,
                "sd_lora": "", "enable_pnginfo": True}

    @app.get("/sdapi/v1/options")
    def get_options():
        return current_options()

    @app.post("/sdapi/v1/options")
    async def set_options(req: dict):
        checkpoint = req.get("sd_model_checkpoint")
        if checkpoint is not None:
            if not isinstance(checkpoint, str):
                raise ServeError(422, f"sd_model_checkpoint must be a model title string, got {checkpoint!r}")
            entry = find_model(checkpoint)
            if entry is not engine.entry:
                await run(lambda: engine.load_model(entry))
        current = current_options()
        ignored = {k: v for k, v in req.items() if k != "sd_model_checkpoint" and current.get(k, object()) != v}
        return {"ignored": ignored} if ignored else None

    # ---------------------------------------------------------------- png-info, progress, interrupt

    @app.post("/sdapi/v1/png-info")
    def png_info(req: PngInfoRequest):
        from latentdiff.cli import PNG_KEY

        image = decode_base64_image(req.image)
        items = {k: v for k, v in image.info.items() if isinstance(v, str)}
        text = items.pop(a1111.INFOTEXT_KEY, None)
        if text is None and PNG_KEY in items:  # a PNG from `latentdiff generate`: translate ours
            text = _infotext_from_ours(items[PNG_KEY])
        if text is None:
            return {"info": "", "items": items, "parameters": {}}
        return {"info": text, "items": items, "parameters": a1111.parse_infotext(text)}

    @app.get("/sdapi/v1/progress")
    def progress(skip_current_image: bool = False):
        p = engine.progress
        total = max(1, p.job_count * p.sampling_steps)
        done = p.job_no * p.sampling_steps + p.sampling_step
        fraction = done / total if p.job else 0.0
        elapsed = time.time() - p.started
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        waiting = worker.queue.qsize()
        return {
            "progress": fraction, "eta_relative": eta,
            "state": {"skipped": False, "interrupted": p.interrupted, "stopping_generation": False,
                      "job": p.job, "job_count": p.job_count, "job_timestamp": p.job_timestamp,
                      "job_no": p.job_no, "sampling_step": p.sampling_step, "sampling_steps": p.sampling_steps},
            "current_image": None if skip_current_image or not p.job else engine.preview(),
            "textinfo": f"{waiting} request(s) waiting" if waiting else None,
        }

    @app.post("/sdapi/v1/interrupt")
    def interrupt():
        if engine.progress.job:
            engine.interrupt.set()
        return {}

    @app.post("/sdapi/v1/skip")
    def skip():
        raise ServeError(501, "skip is not implemented; /sdapi/v1/interrupt stops the running request")

    # ---------------------------------------------------------------- the web UI

    @app.get("/", response_class=HTMLResponse)
    def webui():
        return WEBUI_FILE.read_text(encoding="utf-8")

    return app


def _reason(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase.replace(" ", "")


def _infotext_from_ours(text: str) -> str | None:
    """An A1111 infotext for the JSON chunk `latentdiff generate` writes."""
    try:
        p = json.loads(text)
        sampler = a1111.sampler_for(p["sampler"]).name
        fields = {"Steps": p["steps"], "Sampler": sampler, "CFG scale": p["guidance_scale"], "Seed": p["seed"],
                  "Size": f"{p['width']}x{p['height']}", "Model": p.get("model"),
                  "Eta DDIM": p.get("eta") if p["sampler"] == "ddim" else None, "Version": VERSION}
        return a1111.format_infotext(p["prompt"], p.get("negative_prompt") or "", fields)
    except (ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentdiff serve",
        description="Serve a model over AUTOMATIC1111's /sdapi/v1 HTTP API (webuiapi, Krita/GIMP plugins, "
        "bots) and a web UI at /. The model stays loaded; requests run one at a time behind a bounded queue.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SERVE_HELP_EPILOG)
    p.add_argument("--model", default="emoji", help="the model loaded at start: built-in name or diffusers folder "
                   "(default: emoji)")
    p.add_argument("--models-dir", type=Path, default=None, help="folder of diffusers model folders that "
                   "/sdapi/v1/options may switch to (sd_model_checkpoint)")
    p.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1; others need --api-auth "
                   "or --insecure)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0 picks a free one)")
    p.add_argument("--listen", action="store_true", help="bind all interfaces (0.0.0.0), like A1111's --listen; "
                   "needs --api-auth or --insecure")
    p.add_argument("--api-auth", default=None, metavar="USER:PASS", help="require HTTP basic auth for every "
                   "request")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address without --api-auth")
    p.add_argument("--lora-dir", type=Path, default=None, help="folder of LoRAs for <lora:name:weight> prompt tags")
    p.add_argument("--embeddings-dir", type=Path, default=None, help="folder of textual-inversion embeddings "
                   "(listed only; not supported yet)")
    p.add_argument("--outputs", type=Path, default=None, help="save every generated PNG here (atomically)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--queue-size", type=int, default=Limits.queue_size,
                   help=f"requests that may wait behind the running one; more get 503 (default: {Limits.queue_size})")
    p.add_argument("--max-pixels", type=int, default=Limits.max_pixels,
                   help=f"largest width×height of one image (default: {Limits.max_pixels})")
    p.add_argument("--max-batch", type=int, default=Limits.max_batch,
                   help=f"most images (batch_size × n_iter) per request (default: {Limits.max_batch})")
    p.add_argument("--max-steps", type=int, default=Limits.max_steps,
                   help=f"most sampling steps per request (default: {Limits.max_steps})")
    p.add_argument("--max-body-mb", type=float, default=Limits.max_body_bytes / 2**20,
                   help=f"largest request body in MiB (default: {Limits.max_body_bytes / 2**20:g})")
    return p


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(spec: str | None) -> tuple[str, str] | None:
    if spec is None:
        return None
    user, sep, password = spec.partition(":")
    if not sep or not user or not password:
        raise ValueError(f"--api-auth must be USER:PASS with both parts non-empty, got {spec!r}")
    return user, password


def config_from_args(args: argparse.Namespace) -> tuple[ServeConfig, str]:
    """Check the flags (ValueError naming the flag) and build the config; returns (config, host)."""
    host = args.host or ("0.0.0.0" if args.listen else "127.0.0.1")
    auth = parse_auth(args.api_auth)
    if not is_loopback(host) and auth is None and not args.insecure:
        raise ValueError(f"binding {host} exposes the server beyond this machine; add --api-auth USER:PASS "
                         "(HTTP basic auth), or --insecure if the network is trusted")
    for flag, folder in (("--models-dir", args.models_dir), ("--lora-dir", args.lora_dir),
                         ("--embeddings-dir", args.embeddings_dir)):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder} is not a folder")
    for flag, value in (("--queue-size", args.queue_size), ("--max-pixels", args.max_pixels),
                        ("--max-batch", args.max_batch), ("--max-steps", args.max_steps)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not 0 < args.max_body_mb:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    limits = Limits(max_pixels=args.max_pixels, max_batch=args.max_batch, max_steps=args.max_steps,
                    max_body_bytes=int(args.max_body_mb * 2**20), queue_size=args.queue_size)
    return ServeConfig(args.model, args.models_dir, args.lora_dir, args.embeddings_dir, args.outputs,
                       args.device, auth, limits), host


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot bind {host}:{port} ({e.strerror}); choose another --port (0 picks a free one)") \
            from None
    return sock


def main(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    config, host = config_from_args(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ValueError("latentdiff serve needs the 'serve' extra: pip install 'latentdiff[serve]' "
                         "(fastapi, uvicorn)") from None
    sock = bind(host, args.port)  # before loading: a taken port fails fast
    t0 = time.perf_counter()
    app = create_app(config)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"latentdiff serve: model {app.state.engine.entry.title} loaded in {time.perf_counter() - t0:.1f} s; "
          f"http://{shown}:{port}/ (API: /sdapi/v1/, schema: /openapi.json)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        app.state.worker.stop()
    return 0


__all__ = ["Engine", "Limits", "ServeConfig", "ServeError", "Worker", "create_app", "main",
           "serve_parser"]
