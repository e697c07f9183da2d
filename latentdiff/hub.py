"""Hugging Face Hub sharing: push pipelines, LoRAs and classifiers with a model card; pull them by
repo id into the standard Hub cache (which also serves offline, ``HF_HUB_OFFLINE=1``).

Everything goes through huggingface_hub's own client (``HfApi``, ``snapshot_download``), so the
endpoint (``HF_ENDPOINT``), the cache (``HF_HOME``/``HF_HUB_CACHE``) and the token (``HF_TOKEN``,
then the file written by ``hf auth login``) come from the standard places.

Failures are re-raised as the built-in exception that says what went wrong, with a message that
names it: ``FileNotFoundError`` (not found: repo, revision or file), ``PermissionError`` (auth:
no/invalid token, no access, gated), ``ConnectionError`` (network: Hub unreachable, offline mode
with nothing cached). Tokens never appear in logs, cards or error messages: messages are built
from status codes, never from request headers, and are scrubbed of the token besides.

Only safetensors and small text/JSON/YAML/PNG files are uploaded; a pickle (``.bin``, ``.ckpt``,
``.pt``, ``.pth``, ``.pkl``) anywhere in the folder stops the push before anything is sent.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from latentdiff import model_card as mc
from latentdiff.fs import LORA_WEIGHT_NAME, PICKLE_SUFFIXES, REPO_ID, check_safetensors_file

logger = logging.getLogger("latentdiff")

# Only these are fetched: configs, safetensors weights, tokenizer files, cards and sample images.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.md", "*.png", "*.yaml"]
# ... and the same kinds are pushed, so what is pushed is what is pulled.
UPLOAD_SUFFIXES = (".safetensors", ".json", ".txt", ".md", ".png", ".yaml")
MAX_SMALL_FILE = 10 * 1024 * 1024  # the Hub's limit for a regular (non-LFS) file; weights have no limit


# ---------------------------------------------------------------------------- errors


def _tokens_to_hide(token: str | None) -> list[str]:
    tokens = [token] if isinstance(token, str) and token else []
    try:
        from huggingface_hub import get_token

        stored = get_token()
        if stored:
            tokens.append(stored)
    except Exception:  # never let token lookup turn into a different error
        pass
    return tokens


def _scrub(message: str, tokens: list[str]) -> str:
    for t in tokens:
        if t and len(t) >= 4:
            message = message.replace(t, "<token>")
    return message


def _transport_errors() -> tuple[type, ...]:
    """The HTTP client's connection/timeout exception classes (httpx2 in huggingface_hub 2.x)."""
    errors: list[type] = []
    for module in ("httpx2", "httpx", "requests"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    return tuple(errors)


def _status(e: BaseException) -> int | None:
    return getattr(getattr(e, "response", None), "status_code", None)


def _translate(e: BaseException, what: str, *, action: str, token: str | None) -> BaseException | None:
    """The user-facing exception for a huggingface_hub/HTTP failure, or None if ``e`` is not one: the
    first row of the table whose huggingface_hub error class ``e`` is (subclasses before their bases;
    where huggingface_hub renamed a class, a row names both and the one that exists is used)."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    status, offline, endpoint = _status(e), constants.is_offline_mode(), constants.ENDPOINT
    have_token = bool(token) or bool(_tokens_to_hide(None))
    login = "log in with `hf auth login`, or set HF_TOKEN (for `latentdiff push`: --token-env VAR)"
    if status == 401:
        repo_missing = (PermissionError, f"{what}: not found, or your token has no access to it (auth, HTTP 401); "
                        "check the name and the token's permissions") if have_token else \
            (FileNotFoundError, f"{what} not found on the Hub (not found), or it is private and no token was "
                                f"given (auth): check the name, or {login}")
    else:
        repo_missing = (FileNotFoundError, f"{what} not found on the Hub (not found, HTTP {status}); check the name"
                        + ("" if have_token else f", or if it is private, {login}"))
    not_cached = (ConnectionError, f"{what} is not in the local Hub cache and offline mode is on (network: "
                  "HF_HUB_OFFLINE=1); download it once with network access, or unset HF_HUB_OFFLINE") if offline else \
        (ConnectionError, f"{what}: the Hub at {endpoint} cannot be reached and no cached copy exists (network); "
                          "check your connection, proxy or HF_ENDPOINT")
    http = {
        401: (PermissionError, f"{what}: the Hub rejected the token (auth, HTTP 401): it is invalid or expired; {login}"
              if have_token else f"{what}: authentication required and no token was found (auth, HTTP 401); {login}"),
        403: (PermissionError, f"{what}: access denied (auth, HTTP 403): the token lacks "
                               f"{'write' if action == 'push' else 'read'} permission for this repo or namespace; "
                               "use a token with the right scope"),
        404: (FileNotFoundError, f"{what}: not found on the Hub (not found, HTTP 404)"),
    }.get(status, (ConnectionError, f"{what}: the Hub request failed (HTTP {status}); the Hub may be down, try again "
                                    "later"))
    table = [
        (("RevisionNotFoundError",), (FileNotFoundError, f"{what}: revision not found on the Hub (not found); check "
                                                         "the branch, tag or commit name")),
        (("RemoteEntryNotFoundError", "EntryNotFoundError"),
         (FileNotFoundError, f"{what}: the file is not in the repo at that revision (not found)")),
        (("GatedRepoError",), (PermissionError, f"{what} is gated (auth): accept its terms on the Hub page, then {login}")),
        (("RepositoryNotFoundError",), repo_missing),
        (("IncompleteSnapshotError",), (ConnectionError, f"{what}: the cached copy is incomplete and the Hub cannot be "
                                        f"reached (network{', offline mode HF_HUB_OFFLINE=1' if offline else ''}); "
                                        "download it again with network access")),
        (("LocalEntryNotFoundError",), not_cached),
        (("OfflineModeIsEnabled",), not_cached),
        (("HfHubHTTPError",), http),
    ]
    for names, (cls, message) in table:
        hub_class = next((getattr(hf, n) for n in names if hasattr(hf, n)), None)
        if hub_class is not None and isinstance(e, hub_class):
            return cls(message)
    if isinstance(e, _transport_errors()):
        return ConnectionError(f"{what}: cannot reach the Hub at {endpoint} (network: {type(e).__name__}); "
                               "check your connection, proxy or HF_ENDPOINT")
    return None


@contextlib.contextmanager
def hub_errors(what: str, *, action: str = "pull", token: str | None = None):
    """Re-raise Hub failures inside the block as FileNotFoundError / PermissionError / ConnectionError
    (see the module docstring), and scrub the token out of any error message that passes through."""
    try:
        yield
    except Exception as e:
        tokens = _tokens_to_hide(token)
        new = _translate(e, what, action=action, token=token)
        if new is None:
            text = str(e)
            if not any(t in text for t in tokens if t):
                raise
            new = type(e)(_scrub(text, tokens)) if isinstance(e, (ValueError, OSError)) else \
                RuntimeError(_scrub(text, tokens))
        new.args = tuple(_scrub(str(a), tokens) for a in new.args)
        raise new from None


# ---------------------------------------------------------------------------- pull


def download_repo(repo_id: str, *, revision: str | None = None, kind: str = "model",
                  allow_patterns: list[str] | None = None, token: str | None = None) -> Path:
    """``snapshot_download`` into the standard Hub cache (offline: read from it), with errors that
    say whether it was not-found, auth or network."""
    from huggingface_hub import snapshot_download

    what = f"{kind} {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    with hub_errors(what, action="pull", token=token):
        return Path(snapshot_download(repo_id, revision=revision, token=token,
                                      allow_patterns=allow_patterns or DOWNLOAD_PATTERNS))


def download_file(repo_id: str, filename: str, *, revision: str | None = None, kind: str = "model",
                  token: str | None = None) -> Path:
    """One file of a Hub repo (``hf_hub_download``, standard cache), with the same clear errors;
    a file the repo lacks is a FileNotFoundError that names it."""
    from huggingface_hub import hf_hub_download

    what = f"{kind} {repo_id!r}" + (f" (revision {revision!r})" if revision else "") + f", file {filename!r}"
    with hub_errors(what, action="pull", token=token):
        return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))


# ---------------------------------------------------------------------------- push


@dataclass
class PushResult:
    repo_id: str
    kind: str  # pipeline | lora | classifier
    revision: str  # the branch pushed to ("main" unless a branch was given)
    commit: str  # the commit id
    commit_url: str
    files: list[str] = field(default_factory=list)  # repo paths uploaded
    pr_url: str | None = None
    card_written: bool = False


def upload_plan(folder: Path) -> list[str]:
    """The repo-relative paths to upload from ``folder``: safetensors (each header checked) and small
    text/JSON/YAML/PNG files. A pickle anywhere is a ValueError (nothing is uploaded); hidden files
    and other types are skipped with a warning."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    visible = [p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    pickles = [p for p in visible if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        shown = ", ".join(str(p.relative_to(folder)) for p in pickles[:10])
        more = f" and {len(pickles) - 10} more" if len(pickles) > 10 else ""
        raise ValueError(
            f"{folder} contains pickled files ({shown}{more}); latentdiff pushes safetensors only, because "
            "loading a pickle can run arbitrary code. Nothing was uploaded. Push the exported model folder "
            "(e.g. the trainer's final/ folder, not the run with its checkpoints/), or convert the weights "
            "to safetensors and remove the pickles."
        )
    plan, skipped = [], []
    for p in visible:
        rel = p.relative_to(folder).as_posix()
        if p.suffix == ".safetensors":
            check_safetensors_file(p)
            plan.append(rel)
        elif p.suffix.lower() in UPLOAD_SUFFIXES and p.stat().st_size <= MAX_SMALL_FILE:
            plan.append(rel)
        else:
            skipped.append(rel)
    if skipped:
        logger.warning("Not uploaded (only safetensors and small text/json/yaml/png files are pushed): %s",
                       ", ".join(skipped[:20]) + (f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""))
    if not any(p.endswith(".safetensors") for p in plan):
        raise ValueError(f"{folder} has no .safetensors weights to push")
    return plan


@contextlib.contextmanager
def _staged(path: Path, kind: str):
    """The folder to upload: ``path`` itself, or for a single LoRA file a temporary folder holding it
    as ``pytorch_lora_weights.safetensors`` (the name diffusers' ``load_lora_weights`` looks for)."""
    if path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="latentdiff-push-") as tmp:
        target = Path(tmp) / LORA_WEIGHT_NAME
        try:
            os.link(path, target)  # no copy when on the same file system
        except OSError:
            shutil.copyfile(path, target)
        yield Path(tmp)


def push_to_hub(path: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                branch: str | None = None, revision: str | None = None, commit_message: str | None = None,
                create_pr: bool = False, license: str | None = None, base_model: str | None = None,
                instance_prompt: str | None = None, write_card: bool = True,
                overwrite_card: bool = False) -> PushResult:
    """Upload a pipeline folder, a LoRA (file or folder) or a classifier folder to ``repo_id``.

    The kind is detected from the files (:func:`latentdiff.model_card.detect_kind`). The repo is
    created if needed (``private`` applies to a new repo), ``branch`` (alias ``revision``) is created
    from main if missing, and ``create_pr`` opens a pull request against main instead of committing.
    A model card is written as ``README.md`` into the folder unless one exists (``overwrite_card``
    regenerates it; ``write_card=False`` skips it). ``token`` defaults to the standard places
    (HF_TOKEN, the ``hf auth login`` file); it is never logged or written anywhere.
    """
    path = Path(path).expanduser()
    if branch and revision and branch != revision:
        raise ValueError(f"branch={branch!r} and revision={revision!r} disagree; pass one of them")
    branch = branch or revision
    if create_pr and branch not in (None, "main"):
        raise ValueError("create_pr=True opens a pull request against main; don't also pass a branch")
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"repo id {repo_id!r} must look like 'user/name' (letters, digits, '-', '_', '.')")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a pipeline folder, a LoRA file/folder or a "
                                "classifier folder")
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle; latentdiff pushes safetensors only (loading a pickle can run "
                         "arbitrary code). Nothing was uploaded.")
    kind = mc.detect_kind(path)

    with _staged(path, kind) as folder:
        card_written = False
        if path.is_dir():
            upload_plan(folder)  # refuse pickles before touching the folder (README) or the network
        if write_card:
            facts = mc.gather_facts(folder, kind)
            if base_model:
                facts.base_model = base_model
            if instance_prompt:
                facts.instance_prompt = instance_prompt
            text = mc.make_model_card(facts, repo_id, license=license)
            mc.check_model_card(text, kind=kind, folder=folder)
            card_written = mc.write_model_card(folder, text, overwrite=overwrite_card)
        files = upload_plan(folder)
        message = commit_message or f"Upload {kind} with latentdiff"
        logger.info("Pushing %s %s (%d files) to %s%s", kind, path, len(files), repo_id,
                    f" branch {branch}" if branch else "")

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        what = f"push of {kind} to {repo_id!r}" + (f" (branch {branch!r})" if branch else "")
        with hub_errors(what, action="push", token=token):
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if branch and branch != "main":
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=folder, revision=branch, commit_message=message,
                create_pr=create_pr, allow_patterns=[glob.escape(f) for f in files],
            )
    result = PushResult(repo_id=repo_id, kind=kind, revision=branch or "main", commit=info.oid,
                        commit_url=info.commit_url, files=files, pr_url=getattr(info, "pr_url", None),
                        card_written=card_written)
    logger.info("Pushed %s: %s", repo_id, result.pr_url or result.commit_url)
    return result


# ---------------------------------------------------------------------------- CLI


def push_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentdiff push",
        description="Upload a pipeline folder, a LoRA (file or folder) or a classifier folder to the "
        "Hugging Face Hub, with a generated model card (README.md). Only safetensors and small "
        "text/json/yaml/png files are uploaded; a folder containing pickles (.bin/.ckpt/.pt/.pth/.pkl) "
        "is refused. The token comes from HF_TOKEN or `hf auth login`, or from the environment "
        "variable named by --token-env (there is deliberately no --token: command lines end up in "
        "shell history and process lists).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  latentdiff push runs/emoji/final user/emoji-model
  latentdiff push runs/emoji/final user/emoji-model --private --message "64x64, 20k steps"
  latentdiff push runs/lora/pytorch_lora_weights.safetensors user/sks-lora --base-model emoji
  latentdiff push runs/cls user/emoji-group-classifier --branch v2
  latentdiff push runs/emoji/final user/emoji-model --create-pr --token-env HF_WRITE_TOKEN
  HF_ENDPOINT=https://hub.example.com latentdiff push runs/emoji/final org/model   # a private Hub

then load it anywhere:
  latentdiff generate "red apple" --model user/emoji-model
  latentdiff generate "red apple" --lora user/sks-lora:0.8
""",
    )
    p.add_argument("path", help="pipeline folder, LoRA .safetensors file or folder, or classifier folder")
    p.add_argument("repo_id", help="Hub repo id, 'user/name' or 'org/name' (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private (a new repo only)")
    p.add_argument("--branch", default=None, help="push to this branch (created from main if missing)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    p.add_argument("--token-env", default=None, metavar="VAR",
                   help="read the token from environment variable VAR (default: HF_TOKEN / hf auth login)")
    p.add_argument("--license", default=None, help=f"licence id for the card (default: {mc.DEFAULT_LICENSE})")
    p.add_argument("--base-model", default=None, help="base model for a LoRA/classifier card (repo id or name)")
    p.add_argument("--instance-prompt", default=None, help="instance prompt for a LoRA card")
    p.add_argument("--overwrite-card", action="store_true", help="regenerate README.md even if one exists")
    p.add_argument("--no-card", action="store_true", help="do not write a model card")
    return p


def push_main(argv: list[str] | None = None) -> int:
    """``latentdiff push PATH REPO_ID ...``"""
    args = push_parser().parse_args(argv)
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ValueError(f"--token-env {args.token_env}: that environment variable is not set or empty")
    result = push_to_hub(args.path, args.repo_id, private=args.private, token=token, branch=args.branch,
                         commit_message=args.message, create_pr=args.create_pr, license=args.license,
                         base_model=args.base_model, instance_prompt=args.instance_prompt,
                         write_card=not args.no_card, overwrite_card=args.overwrite_card)
    print(f"pushed {result.kind} to {result.repo_id} ({result.revision}): {len(result.files)} files")
    print(f"  commit: {result.commit_url}")
    if result.pr_url:
        print(f"  pull request: {result.pr_url}")
    return 0
