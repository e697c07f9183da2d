"""An offline CLIP tokenizer, built from the BPE vocabulary that open_clip_torch ships.

The file ``bpe_simple_vocab_16e6.txt.gz`` inside open_clip is OpenAI CLIP's byte-level BPE
(49,408 tokens). We rebuild the exact vocabulary order OpenAI's ``SimpleTokenizer`` uses (256 byte
symbols, the same with ``</w>``, 48,894 merges, then the two special tokens) and hand it to
transformers' ``CLIPTokenizer``, so no Hub download is needed. Saved pipelines carry the tokenizer
files themselves (``tokenizer/vocab.json``, ``merges.txt``), so this runs once per new model.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache

MODEL_MAX_LENGTH = 77
_NUM_MERGES = 49152 - 256 - 2


def clip_bpe_path() -> str:
    """Path of open_clip's bundled BPE merges file; FileNotFoundError if open_clip is missing."""
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - dependency is declared
        raise FileNotFoundError("open_clip_torch is not installed; `pip install open_clip_torch`") from e
    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path}; reinstall open_clip_torch")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable unicode map (GPT-2 / CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) in OpenAI CLIP's order: token ids match the released CLIP models."""
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = MODEL_MAX_LENGTH):
    """A transformers ``CLIPTokenizer`` equal to ``openai/clip-vit-large-patch14``'s, built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def save_tokenizer(tokenizer, directory) -> None:
    """Save a CLIP BPE tokenizer as ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``.

    These are the classic CLIP files (Stable Diffusion's own tokenizer folders use them); both
    transformers and diffusers load them, and at 1.4 MB they are less than half the size of the
    ``tokenizer.json`` that transformers v5 writes, which matters for the shipped model's budget.
    Tokenizers that are not byte-level BPE fall back to ``save_pretrained``.
    """
    import json
    from pathlib import Path

    out = Path(directory)
    try:
        model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    except (AttributeError, KeyError, ValueError):
        model = {}
    if model.get("type") != "BPE" or type(tokenizer).__name__ != "CLIPTokenizer":
        tokenizer.save_pretrained(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": int(tokenizer.model_max_length),
        "bos_token": str(tokenizer.bos_token),
        "eos_token": str(tokenizer.eos_token),
        "unk_token": str(tokenizer.unk_token),
        "pad_token": str(tokenizer.pad_token),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
