"""Hugging Face Hub access: download into the standard cache (works offline from it)."""

from __future__ import annotations

from pathlib import Path

# Only these are fetched: configs, safetensors weights, tokenizer files, cards and sample images.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.md", "*.png", "*.yaml"]


def download_repo(repo_id: str, *, revision: str | None = None, kind: str = "model",
                  allow_patterns: list[str] | None = None) -> Path:
    """snapshot_download with errors that say whether it was not-found, auth or network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns or DOWNLOAD_PATTERNS))
    except hf_errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{kind} {repo_id!r}: revision {revision!r} not found on the Hub") from None
    except hf_errors.GatedRepoError:
        raise PermissionError(f"{kind} {repo_id!r} is gated: accept its terms on the Hub and log in "
                              "(`huggingface-cli login` or HF_TOKEN)") from None
    except hf_errors.RepositoryNotFoundError:
        raise FileNotFoundError(f"{kind} {repo_id!r} not found on the Hub, or it is private and no valid token "
                                "was given (auth): check the name, or log in") from None
    except hf_errors.LocalEntryNotFoundError:
        raise ConnectionError(f"{kind} {repo_id!r} is not in the local Hub cache and the Hub cannot be reached "
                              "(network, or HF_HUB_OFFLINE=1): connect, or download it first") from None
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise PermissionError(f"{kind} {repo_id!r}: access denied (auth, HTTP {status}); check your token") from None
        raise ConnectionError(f"{kind} {repo_id!r}: Hub request failed (HTTP {status})") from None
