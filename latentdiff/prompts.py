"""Prompt text -> conditioning, as A1111/Forge and ComfyUI users write it.

Three layers, each a plain function, after one split:

0. **Composable prompts** (:func:`split_and`): ``a AND b :0.5`` is two prompts, each with a weight
   (A1111's composable diffusion, Liu et al. 2022); the pipeline guides with
   ε_∅ + s·Σ w_i (ε_i − ε_∅) (:class:`latentdiff.denoisers.ComposableGuidance`). A weight may be
   negative: ``"red apple, twemoji style :2 AND red apple :-1"`` is ordinary guidance plus guidance
   along what ", twemoji style" adds.
1. **Schedules** (:func:`prompt_schedule`): ``[from:to:when]`` switches text at a step (an integer)
   or a fraction of the steps (a number with a ".": ``0.5``), ``[to:when]`` adds and ``[from::when]``
   removes text; ``[a|b|c]`` alternates every step. The result is the plain text of every step,
   merged into runs: ``[(end_step, text), ...]`` (text applies to steps ``< end_step``).
2. **Attention** (:func:`parse_attention`): ``(word)`` ×1.1, ``((word))`` ×1.21, ``[word]`` ÷1.1,
   ``(word:1.4)``, ``\\(`` escapes, ``BREAK`` (a new 75-token chunk). Unbalanced brackets are not an
   error: an unclosed bracket weights everything after it (A1111's documented behaviour, reproduced
   in tests/test_prompts.py from A1111's own examples).
3. **Encoding** (:func:`encode_weighted`): tokens in chunks of 75 (BOS/EOS added per chunk, the
   split backs up to the last comma within 20 tokens), each chunk through the text encoder, the
   chunks concatenated along the sequence axis; weights applied by the chosen normalisation:

   - ``"a1111"``: z ← z·w per token, then z rescaled to keep the chunk's mean (A1111's default);
   - ``"comfy"``: z ← z_∅ + w·(z − z_∅), z_∅ the encoding of the empty prompt (ComfyUI, compel);
   - ``"none"``: weights ignored.

A prompt without weights, schedules or BREAK and at most 75 tokens encodes bit for bit as diffusers'
pipeline does (one padded 77-token sequence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

NORMALIZATIONS = ("a1111", "comfy", "none", "compel")  # "compel": compel's own syntax, through the compel library
CHUNK = 75                 # tokens per chunk between BOS and EOS
COMMA_BACKTRACK = 20       # a chunk split moves back to the last comma within this many tokens
ROUND, SQUARE = 1.1, 1 / 1.1
BREAK = "BREAK"

# ------------------------------------------------------------------ 1. schedules

_SPECIAL = set("[]|:")


@dataclass
class _Alt:
    options: list


@dataclass
class _Sched:
    before: list | None
    after: list
    when: str


def _parse_schedule_tree(text: str) -> list:
    """Plain strings and _Alt/_Sched nodes. Brackets that are not a schedule or an alternation
    (``[word]`` emphasis, unbalanced ones) stay as text for the attention parser."""
    pos = 0

    def parse_seq(stop: set[str]) -> list:
        nonlocal pos
        out, buf, depth = [], [], 0  # inside (…) a ":" is a weight, not a schedule separator
        while pos < len(text):
            c = text[pos]
            if c == "\\" and pos + 1 < len(text):
                buf.append(text[pos:pos + 2])
                pos += 2
                continue
            if c in stop and not (depth and c == ":"):
                break
            depth += (c == "(") - (c == ")" and depth > 0)
            if c == "[":
                start = pos
                node = parse_bracket()
                if node is None:  # not a schedule/alternation: keep "[" as text and go on
                    pos = start + 1
                    buf.append("[")
                    continue
                if buf:
                    out.append("".join(buf))
                    buf = []
                out.append(node)
                continue
            buf.append(c)
            pos += 1
        if buf:
            out.append("".join(buf))
        return out

    def parse_bracket():
        nonlocal pos
        start = pos
        pos += 1
        parts, seps = [parse_seq({"]", "|", ":"})], []
        while pos < len(text) and text[pos] in "|:":
            seps.append(text[pos])
            pos += 1
            parts.append(parse_seq({"]", "|", ":"}))
        if pos >= len(text) or text[pos] != "]" or not seps:
            pos = start
            return None
        pos += 1
        if all(s == "|" for s in seps):
            return _Alt(parts)
        if all(s == ":" for s in seps) and len(parts) in (2, 3):
            when = "".join(p if isinstance(p, str) else "\x00" for p in parts[-1]).strip()
            if re.fullmatch(r"\d+(\.\d*)?|\.\d+", when):
                return _Sched(parts[0] if len(parts) == 3 else None, parts[-2], when)
        pos = start
        return None

    return parse_seq(set())


def _when_step(when: str, steps: int) -> int:
    """A number with a '.' is a fraction of the steps; an integer is a step count."""
    v = float(when)
    return min(steps, int(v * steps) if "." in when else int(v))


def _render(nodes: list, step: int, steps: int) -> str:
    out = []
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
        elif isinstance(n, _Alt):
            out.append(_render(n.options[step % len(n.options)], step, steps))
        else:
            part = n.before if step < _when_step(n.when, steps) else n.after
            out.append(_render(part or [], step, steps))
    return "".join(out)


def has_schedule(text: str) -> bool:
    return any(not isinstance(n, str) for n in _parse_schedule_tree(text))


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """``[(end_step, text), ...]``: the plain text of each step, merged into runs (see the module
    docstring); a prompt without schedules gives ``[(steps, text)]``."""
    tree = _parse_schedule_tree(text)
    if all(isinstance(n, str) for n in tree):
        return [(steps, "".join(tree))]
    runs: list[tuple[int, str]] = []
    for i in range(steps):
        t = _render(tree, i, steps)
        if runs and runs[-1][1] == t:
            runs[-1] = (i + 1, t)
        else:
            runs.append((i + 1, t))
    return runs


# ------------------------------------------------------------------ 0. composable prompts

_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """``[(text, weight), ...]``: the prompt split at the word ``AND`` (upper case, a whole word), each
    part's trailing ``:number`` its weight (default 1), as A1111 reads it. A prompt without ``AND``
    is one part of weight 1, whatever it ends with: A1111 would read "keycap: 9" (a CLDR name in the
    emoji data) as "keycap" at weight 9; here that needs an ``AND`` (write "keycap: 9 :1 AND …")."""
    if not is_composable(prompt):
        return [(prompt, 1.0)]
    out = []
    for part in _AND.split(prompt):
        m = _PART_WEIGHT.match(part)
        out.append((m.group(1), float(m.group(2)) if m.group(2) is not None else 1.0))
    return out


def is_composable(prompt: str) -> bool:
    """True when the prompt has an ``AND`` (:func:`split_and` gives more than one part)."""
    return bool(_AND.search(prompt))


# ------------------------------------------------------------------ 2. attention

_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_attention(text: str) -> list[list]:
    """``[[text, weight], ...]`` with A1111's semantics; ``["BREAK", -1]`` marks a forced chunk
    break. Adjacent pieces of equal weight are merged; "" gives ``[["", 1.0]]``."""
    res: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in res[start:]:
            if piece[1] != -1:
                piece[1] *= factor

    for m in _TOKEN.finditer(text):
        tok, number = m.group(0), m.group(1)
        if tok.startswith("\\"):  # an escaped bracket or backslash is literal; a lone backslash is dropped
            res.append([tok[1:], 1.0])
        elif tok == "(":
            open_round.append(len(res))
        elif tok == "[":
            open_square.append(len(res))
        elif number is not None and open_round:
            scale(open_round.pop(), float(number))
        elif tok == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif tok == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(tok)):
                if i:
                    res.append([BREAK, -1])
                if part:
                    res.append([part, 1.0])
    for start in open_round:
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)
    if not res:
        return [["", 1.0]]
    merged = [res[0]]
    for piece in res[1:]:
        if piece[1] == merged[-1][1] and piece[1] != -1:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


# ------------------------------------------------------------------ 3. tokens and encoding


def weighted_chunks(tokenizer, fragments: Sequence[Sequence], chunk: int = CHUNK,
                    comma_backtrack: int = COMMA_BACKTRACK) -> list[tuple[list[int], list[float]]]:
    """Token ids and weights of ``fragments`` (from :func:`parse_attention`), split into chunks of
    at most ``chunk`` tokens (without BOS/EOS)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def flush():
        nonlocal ids, weights, last_comma
        chunks.append((ids, weights))
        ids, weights, last_comma = [], [], -1

    for text, weight in fragments:
        if weight == -1:  # BREAK
            flush()
            continue
        for tid in tokenizer(text, add_special_tokens=False, truncation=False).input_ids:
            if len(ids) == chunk:
                if last_comma >= 0 and len(ids) - last_comma <= comma_backtrack:
                    cut = last_comma + 1
                    rest_ids, rest_w = ids[cut:], weights[cut:]
                    ids, weights = ids[:cut], weights[:cut]
                    flush()
                    ids, weights = rest_ids, rest_w
                else:
                    flush()
            if tid == comma:
                last_comma = len(ids)
            ids.append(tid)
            weights.append(float(weight))
    if ids or not chunks:
        flush()
    return chunks


def _chunk_ids(tokenizer, ids: list[int], chunk: int) -> list[int]:
    """[BOS] ids [EOS] + padding to chunk + 2, exactly as the tokenizer pads with max_length."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seq = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return seq + [pad] * (chunk + 2 - len(seq))


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str], *, normalization: str = "a1111",
                   min_chunks: int = 1) -> torch.Tensor:
    """(B, 77·k, D): each prompt (attention syntax, no schedules) split into k chunks (the batch's
    largest count, at least ``min_chunks``; shorter prompts get chunks of ""), all chunks through the
    text encoder in one batch, weights applied by ``normalization`` (module docstring)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"prompt normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}")
    if normalization == "compel":
        return _encode_with_compel(text_encoder, tokenizer, prompts, min_chunks)
    size = tokenizer.model_max_length - 2
    per_prompt = [weighted_chunks(tokenizer, parse_attention(p), size) for p in prompts]
    k = max(min_chunks, *(len(c) for c in per_prompt))
    flat = [c for chunks in per_prompt for c in chunks + [([], [])] * (k - len(chunks))]
    device = text_encoder.device
    ids = torch.tensor([_chunk_ids(tokenizer, i, size) for i, _ in flat], device=device)   # (B·k, 77)
    z = text_encoder(ids)[0]                                                              # (B·k, 77, D)
    w = torch.ones(ids.shape, dtype=z.dtype, device=device)
    for row, (_, weights) in enumerate(flat):
        if weights:
            w[row, 1:1 + len(weights)] = torch.tensor(weights, dtype=z.dtype, device=device)
    if normalization != "none" and not torch.all(w == 1):
        weighted = (w != 1).any(1)                                                        # rows to change
        if normalization == "a1111":
            scaled = z * w[..., None]
            scaled = scaled * (z.mean((1, 2)) / scaled.mean((1, 2)))[:, None, None]
        else:
            empty = torch.tensor([_chunk_ids(tokenizer, [], size)], device=device)
            z_empty = text_encoder(empty)[0]
            scaled = torch.where(w[..., None] == 1, z, z_empty + (z - z_empty) * w[..., None])
        z = torch.where(weighted[:, None, None], scaled, z)
    return z.reshape(len(prompts), k * ids.shape[1], z.shape[-1])


def _encode_with_compel(text_encoder, tokenizer, prompts, min_chunks: int) -> torch.Tensor:
    """compel's syntax (``blue++``, ``(blue)1.3``, ``.blend()``, ``.and()``) by the compel library."""
    try:
        from compel import Compel
    except ImportError:
        raise ValueError("prompt normalization 'compel' needs the compel package: pip install compel") from None
    compel = Compel(tokenizer=tokenizer, text_encoder=text_encoder, truncate_long_prompts=False)
    embeds = [compel(p) for p in prompts]
    length = max(min_chunks * tokenizer.model_max_length, *(e.shape[1] for e in embeds))
    if length > embeds[0].shape[1] or len({e.shape[1] for e in embeds}) > 1:
        empty = compel("")
        embeds = [torch.cat([e] + [empty] * ((length - e.shape[1]) // empty.shape[1]), dim=1) for e in embeds]
    return torch.cat(embeds)


def num_chunks(tokenizer, prompt: str) -> int:
    return len(weighted_chunks(tokenizer, parse_attention(prompt), tokenizer.model_max_length - 2))


# ------------------------------------------------------------------ LoRA tags

# A1111's extra-network tags (<lora:name:weight>, <hypernet:...>): one parser for the pipeline and the server
EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass
class PromptTags:
    prompt: str  # the prompt the text encoder sees: every <kind:...> tag removed, as A1111 does
    loras: list[tuple[str, float]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # tags of other kinds (<hypernet:...>, <lyco:...>)


def parse_prompt_tags(prompt: str) -> PromptTags:
    """Split A1111 extra-network tags out of a prompt. ``<lora:name>`` has weight 1;
    ``<lora:name:te:unet>`` (separate text-encoder/U-Net weights) is accepted only when both are equal."""
    loras, ignored = [], []
    for m in EXTRA_NETWORK_TAG.finditer(prompt):
        kind, args = m.group(1), m.group(2).split(":")
        if kind != "lora":
            ignored.append(m.group(0))
            continue
        name, weights = args[0].strip(), [a.strip() for a in args[1:]]
        if not name:
            raise ValueError(f"LoRA tag {m.group(0)!r} has no name; write <lora:NAME:WEIGHT>")
        try:
            values = [float(w) for w in weights] or [1.0]
        except ValueError:
            raise ValueError(f"LoRA tag {m.group(0)!r}: weight must be a number, e.g. <lora:{name}:0.8>") from None
        if len(values) > 2 or len(set(values)) > 1:
            raise ValueError(f"LoRA tag {m.group(0)!r}: separate text-encoder and U-Net weights are not "
                             f"supported; give one weight, e.g. <lora:{name}:{values[0]:g}>")
        loras.append((name, values[0]))
    clean = re.sub(r" {2,}", " ", EXTRA_NETWORK_TAG.sub("", prompt)).strip()
    return PromptTags(clean, loras, ignored)


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """``"a cat <lora:symbola:0.8>"`` → ``("a cat", [("symbola", 0.8)])``: :func:`parse_prompt_tags`'s
    prompt and LoRAs."""
    tags = parse_prompt_tags(prompt)
    return tags.prompt, tags.loras
