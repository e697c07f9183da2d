"""Training data: the shipped emoji dataset and a tolerant image–caption dataset.

:func:`build_dataset` turns any of these sources into an :class:`ImageCaptionDataset`:

* ``"emoji"`` / ``"emoji:<style>"`` — the Parquet files shipped in ``latentdiff/data/``
  (styles noto, symbola, twemoji, openmoji, fluent; ``"emoji:all"`` = the four colour styles,
  each image with its plain and its "<name>, <style> style" caption);
* a folder in the ``imagefolder`` convention with ``metadata.jsonl`` lines
  ``{"file_name": "a.png", "text": "a caption", ...}`` (as the diffusers examples use);
* a folder of images with sidecar captions ``a.png`` + ``a.txt`` (kohya convention,
  nested subfolders included; ``.caption`` works too);
* a folder of images without captions plus ``instance_prompt`` (DreamBooth);
* a ``datasets`` dataset: a ``save_to_disk`` folder, a Parquet file, a local data folder
  or a Hub name, read with ``image_column`` / ``caption_column``.

Bad data never stops a run and is never silent.  Every image is opened once at
construction so broken files are skipped up front and ``len()`` is exact; all
conversions and skips are counted in ``dataset.report`` (a :class:`DataReport`) and
logged on the ``latentdiff.data`` logger (WARNING when something was skipped or a
caption was missing/empty/undecodable).

Randomness (random crop, flip, caption dropout, choice among several captions) comes
from a ``torch.Generator`` seeded by ``(seed, epoch, index)``, so a run is reproducible
regardless of DataLoader worker count; call :meth:`ImageCaptionDataset.set_epoch` at the
start of every epoch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from latentdiff.errors import MissingSplitError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger("latentdiff.data")

PACKAGE_DIR = Path(__file__).resolve().parent
# The one registry of shipped emoji styles: style name -> Parquet file (folder latentdiff/data/<folder>/).
EMOJI_PARQUET = {
    "noto": PACKAGE_DIR / "emoji" / "emoji.parquet",
    "symbola": PACKAGE_DIR / "emoji_symbola" / "emoji.parquet",
    "twemoji": PACKAGE_DIR / "emoji_twemoji" / "emoji.parquet",
    "openmoji": PACKAGE_DIR / "emoji_openmoji" / "emoji.parquet",
    "fluent": PACKAGE_DIR / "emoji_fluent" / "emoji.parquet",
}
# style="all": the colour styles of the same captions.  Symbola (monochrome line art) stays out: it is
# the style a LoRA learns in the fine-tuning demo.
EMOJI_ALL_STYLES = ("noto", "twemoji", "openmoji", "fluent")
EMOJI_STYLES = (*EMOJI_PARQUET, "all")
EMOJI_SPLITS = ("train", "test", "all")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CAPTION_EXTENSIONS = (".txt", ".caption")
METADATA_FILE = "metadata.jsonl"
# Files that make a folder a `datasets` save_to_disk folder rather than an image folder.
_SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_DATA_FILE_EXTENSIONS = frozenset({".parquet", ".arrow", ".csv", ".json", ".jsonl"})
_RESERVED_KEYS = ("pixel_values", "caption", "index")
_MAX_EXAMPLES = 5  # offending file names remembered per reason, for the summary


# --------------------------------------------------------------------------- shipped emoji


def emoji_styles(style: str) -> tuple[str, ...]:
    """The single styles ``style`` stands for: ``("noto",)`` for "noto", :data:`EMOJI_ALL_STYLES` for "all"."""
    if style not in EMOJI_STYLES:
        raise ValueError(f"unknown emoji style {style!r}; allowed: {list(EMOJI_STYLES)}")
    return EMOJI_ALL_STYLES if style == "all" else (style,)


def emoji_parquet_paths(style: str = "noto") -> list[Path]:
    """The shipped Parquet files of ``style`` (one, or four for "all")."""
    paths = []
    for s in emoji_styles(style):
        path = EMOJI_PARQUET[s]
        if not path.is_file():
            flag = "" if s == "noto" else f" --style {s}"
            raise FileNotFoundError(f"{path} is missing; build it with `python -m latentdiff.data.build_emoji{flag}`")
        paths.append(path)
    return paths


def emoji_parquet_path(style: str = "noto") -> Path:
    """Path of the shipped emoji Parquet file for one style (see :data:`EMOJI_PARQUET`)."""
    if style == "all":
        raise ValueError(f"emoji style 'all' is {len(EMOJI_ALL_STYLES)} files ({', '.join(EMOJI_ALL_STYLES)}); "
                         "use emoji_parquet_paths('all') or load_emoji(split, 'all')")
    return emoji_parquet_paths(style)[0]


def style_caption(text: str, style: str) -> str:
    """The style-suffixed caption: ``"red apple, twemoji style"``."""
    return f"{text}, {style} style"


def read_emoji_table(split: str = "train", style: str = "noto", columns: Sequence[str] | None = None):
    """The shipped emoji rows of ``split`` as one :class:`pyarrow.Table` with a ``style`` column.

    Noto and Symbola files predate the column and get it here; for "all" the styles' tables are
    concatenated in :data:`EMOJI_ALL_STYLES` order.  ``columns`` reads only those (plus ``style``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split not in EMOJI_SPLITS:
        raise ValueError(f"unknown emoji split {split!r}; allowed: {list(EMOJI_SPLITS)}")
    filters = None if split == "all" else [("split", "==", split)]
    tables = []
    for s, path in zip(emoji_styles(style), emoji_parquet_paths(style)):
        cols = None if columns is None else [c for c in columns if c != "style"]
        if cols is not None and "style" in pq.read_schema(path).names:
            cols.append("style")
        table = pq.read_table(path, columns=cols, filters=filters)
        if "style" not in table.column_names:
            table = table.append_column("style", pa.array([s] * table.num_rows, pa.string()))
        tables.append(table.replace_schema_metadata(None))
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    feats = json.loads(pq.read_schema(EMOJI_PARQUET[emoji_styles(style)[0]]).metadata[b"huggingface"])
    feats["info"]["features"]["style"] = {"dtype": "string", "_type": "Value"}
    feats["info"]["features"] = {k: v for k, v in feats["info"]["features"].items() if k in table.column_names}
    return table.replace_schema_metadata({b"huggingface": json.dumps(feats, sort_keys=True).encode()})


def load_emoji(split: str = "train", style: str = "noto") -> datasets.Dataset:
    """The shipped emoji dataset as a :class:`datasets.Dataset`.

    Columns: ``image`` (decoded as an RGB PIL image), ``text`` (CLDR name, the caption),
    ``group``, ``subgroup``, ``codepoints``, ``split``, ``style``.  ``split`` is "train", "test"
    or "all"; ``style`` one of :data:`EMOJI_STYLES`: "noto" (default), "symbola", "twemoji",
    "openmoji", "fluent", or "all" (noto + twemoji + openmoji + fluent, one row per image with
    its plain caption).  Every style has the same split for the same code points.

    The Parquet file is read with pyarrow and wrapped in memory (a few MB) rather than via
    ``Dataset.from_parquet``, which would copy it into the Hugging Face cache on every new
    install and print a progress bar; the features (``image`` as ``Image(mode="RGB")``) come
    from the file's schema metadata either way.
    """
    import datasets
    from datasets.table import InMemoryTable

    table = read_emoji_table(split, style)
    return datasets.Dataset(InMemoryTable(table), split=None if split == "all" else datasets.NamedSplit(split))


def with_style_captions(table):
    """Every row of a :func:`read_emoji_table` table twice: first all rows with their plain caption,
    then all again with :func:`style_caption` ("red apple, twemoji style"), so half the rows name
    their style and a plain prompt is trained on every style."""
    import pyarrow as pa

    texts, styles = table.column("text").to_pylist(), table.column("style").to_pylist()
    suffixed = table.set_column(table.column_names.index("text"), "text",
                                pa.array([style_caption(t, s) for t, s in zip(texts, styles)], pa.string()))
    return pa.concat_tables([table, suffixed])


# --------------------------------------------------------------------------- report


@dataclass
class DataReport:
    """What happened to each candidate image while building a dataset.

    ``seen`` candidates = ``kept`` + skipped (``skipped_*``).  Conversions, caption fixes
    and ignored files leave the item in the dataset and are counted separately.
    ``examples`` keeps up to a few offending file names per counter, for the summary.
    """

    source: str = ""
    seen: int = 0
    kept: int = 0
    # skipped
    skipped_corrupt: int = 0  # truncated / unreadable image data
    skipped_not_image: int = 0  # has an image extension (or is listed in metadata) but is no image
    skipped_missing_file: int = 0  # listed in metadata.jsonl but not on disk
    skipped_unsupported_mode: int = 0  # a PIL mode we cannot turn into RGB
    # converted (kept)
    converted_modes: dict[str, int] = field(default_factory=dict)  # original PIL mode -> count
    alpha_composited: int = 0  # transparency composited on white
    upscaled: int = 0  # shorter side below the training resolution
    exif_rotated: int = 0  # EXIF orientation applied
    # captions (kept)
    empty_caption: int = 0  # caption present but blank: kept as "" (or the instance prompt)
    missing_caption: int = 0  # no caption at all: kept as ""
    invalid_utf8_caption: int = 0  # decoded with U+FFFD replacement characters
    instance_prompt_used: int = 0  # caption taken from instance_prompt
    missing_label: int = 0  # label column empty/absent for an item: label name ""
    # other
    bad_metadata_lines: int = 0  # metadata.jsonl lines that are not JSON objects with file_name
    ignored_files: int = 0  # files that are neither images, captions nor metadata
    # Files that failed after construction (changed on disk) and were replaced by the next item.
    # Counted in the process that loaded them: DataLoader workers keep their own copy.
    load_errors: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, counter: str, name: str = "", amount: int = 1) -> None:
        """Increment ``counter`` and remember ``name`` as an example of it."""
        setattr(self, counter, getattr(self, counter) + amount)
        if name:
            names = self.examples.setdefault(counter, [])
            if len(names) < _MAX_EXAMPLES:
                names.append(name)

    def note_mode(self, mode: str, name: str = "") -> None:
        self.converted_modes[mode] = self.converted_modes.get(mode, 0) + 1
        if name:
            names = self.examples.setdefault(f"mode {mode}", [])
            if len(names) < _MAX_EXAMPLES:
                names.append(name)

    @property
    def skipped(self) -> int:
        return (self.skipped_corrupt + self.skipped_not_image + self.skipped_missing_file
                + self.skipped_unsupported_mode)

    @property
    def caption_problems(self) -> int:
        return self.empty_caption + self.missing_caption + self.invalid_utf8_caption

    @property
    def converted(self) -> int:
        return sum(self.converted_modes.values()) + self.upscaled + self.exif_rotated

    def summary(self) -> str:
        """Human-readable multi-line summary; only non-zero counters are listed."""

        def line(label: str, counter: str, value: int) -> str:
            ex = self.examples.get(counter)
            return f"    {label}: {value}" + (f" (e.g. {', '.join(ex)})" if ex else "")

        out = [f"data report for {self.source}: kept {self.kept} of {self.seen} images"]
        skipped = [("corrupt, truncated or unreadable image", "skipped_corrupt"), ("not an image", "skipped_not_image"),
                   (f"image file missing (listed in {METADATA_FILE} or the dataset)", "skipped_missing_file"),
                   ("unsupported image mode", "skipped_unsupported_mode")]
        if self.skipped:
            out.append(f"  skipped {self.skipped}:")
            out += [line(label, c, getattr(self, c)) for label, c in skipped if getattr(self, c)]
        kept = [("transparency composited on white", "alpha_composited"),
                ("upscaled (smaller than the resolution)", "upscaled"), ("EXIF rotation applied", "exif_rotated")]
        if self.converted or self.alpha_composited:
            out.append("  converted (kept):")
            for mode, n in sorted(self.converted_modes.items()):
                out.append(line(f"{mode} -> RGB", f"mode {mode}", n))
            out += [line(label, c, getattr(self, c)) for label, c in kept if getattr(self, c)]
        captions = [("empty caption", "empty_caption"), ("missing caption (kept as \"\")", "missing_caption"),
                    ("invalid UTF-8 (decoded with U+FFFD)", "invalid_utf8_caption"),
                    ("instance prompt used", "instance_prompt_used"), ("missing label", "missing_label")]
        if any(getattr(self, c) for _, c in captions):
            out.append("  captions and labels (kept):")
            out += [line(label, c, getattr(self, c)) for label, c in captions if getattr(self, c)]
        other = [(f"bad {METADATA_FILE} lines", "bad_metadata_lines"),
                 ("ignored files (not images, captions or metadata)", "ignored_files"),
                 ("read errors after construction (replaced by another item)", "load_errors")]
        if any(getattr(self, c) for _, c in other):
            out.append("  other:")
            out += [line(label, c, getattr(self, c)) for label, c in other if getattr(self, c)]
        return "\n".join(out)


# --------------------------------------------------------------------------- images


class _Skip(Exception):
    """An image that cannot be used; ``counter`` names the DataReport field."""

    def __init__(self, counter: str, detail: str):
        super().__init__(detail)
        self.counter = counter


_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _open(src: str | bytes) -> Image.Image:
    return Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)


def _read_image(src: str | bytes, draft_size: int | None = None,
                verify: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode an image; returns it and its stored size (before any JPEG draft).

    Raises :class:`_Skip` for anything unusable.

    ``verify`` additionally runs PIL's structural check (PNG chunk CRCs etc.) first, which
    catches damage that decoding alone can let through when a library has set
    ``ImageFile.LOAD_TRUNCATED_IMAGES``.  ``draft_size`` lets JPEGs decode at a reduced
    scale that is still at least that size (much faster for large photos).
    """
    try:
        if verify:
            with _open(src) as im:
                im.verify()
        im = _open(src)
        size = im.size
        if draft_size and im.format == "JPEG":
            im.draft(im.mode, (draft_size, draft_size))
        im.load()
        return im, size
    except UnidentifiedImageError as e:
        raise _Skip("skipped_not_image", str(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        # Pillow reports truncation and damaged chunks as OSError/SyntaxError/ValueError.
        raise _Skip("skipped_corrupt", f"{type(e).__name__}: {e}") from e


def _to_rgb(im: Image.Image, report: DataReport | None = None, name: str = "",
            expected_modes: frozenset[str] = frozenset()) -> Image.Image:
    """Convert any PIL image to 8-bit RGB; transparency is composited on white.

    With a ``report``, each conversion is counted (modes in ``expected_modes`` are not:
    the shipped emoji are palette/grayscale PNGs by design).
    """
    if im.getexif().get(0x0112, 1) not in (1, None):  # EXIF Orientation: camera photos
        im = ImageOps.exif_transpose(im)
        if report is not None:
            report.note("exif_rotated", name)
    mode = im.mode
    if mode == "RGB":
        return im
    count = report is not None and mode not in expected_modes
    if count:
        report.note_mode(mode, name)
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        if count:
            report.note("alpha_composited", name)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        # PIL's own convert("L") clips 16/32-bit values to 255 (an almost white image);
        # scale the real range instead: 16-bit data by 1/257, floats in [0, 1] by 255.
        arr = np.asarray(im, dtype=np.float64)
        if mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        elif mode in _SIXTEEN_BIT_MODES or (arr.size and arr.max() > 255):
            arr = arr / 257.0
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as e:
        raise _Skip("skipped_unsupported_mode", f"cannot convert mode {mode} to RGB: {e}") from e


# --------------------------------------------------------------------------- captions


def _clean_caption(text: str) -> str:
    """Collapse whitespace (newlines in kohya files, stray tabs) to single spaces."""
    return " ".join(text.split())


def _decode_caption(raw: bytes, report: DataReport, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        report.note("invalid_utf8_caption", name)
        return raw.decode("utf-8", errors="replace")


def _caption_value(value: Any, report: DataReport, name: str) -> str | tuple[str, ...] | None:
    """Normalise a caption cell; ``None`` when absent, a tuple for several captions (one is drawn)."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN (pandas' missing)
        return None
    if isinstance(value, (bytes, bytearray)):
        return _clean_caption(_decode_caption(bytes(value), report, name))
    if isinstance(value, (list, tuple)):
        texts = tuple(t for t in (_caption_value(v, report, name) for v in value) if isinstance(t, str) and t)
        return texts or ""
    return _clean_caption(str(value))


# --------------------------------------------------------------------------- records


@dataclass
class _Record:
    name: str  # file name or "row 12", for messages
    path: str | None = None  # image file, or
    row: int | None = None  # row of the wrapped `datasets` dataset
    caption: str | tuple[str, ...] = ""
    labels: tuple[Any, ...] = ()  # raw values while building, ints afterwards


def _seed_for(*parts: int) -> int:
    """A 63-bit seed that decorrelates neighbouring (seed, epoch, index) tuples."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Images with captions (and optional integer labels) ready for diffusion training.

    Items are dicts: ``pixel_values`` (float32, 3×R×R, in [-1, 1]), ``caption`` (str),
    ``index`` (int) and one int per label column.  See :func:`build_dataset` for the
    sources and arguments; construction validates every image (so ``len()`` is exact) and
    fills :attr:`report`.  :attr:`label_names` maps each label column to its sorted names
    (the id of a name is its position).
    """

    def __init__(self, source: str, *, split: str | None = None, image_column: str = "image",
                 caption_column: str | None = "text", label_columns: Sequence[str] = (), resolution: int = 64,
                 center_crop: bool = True, random_flip: bool = False, caption_dropout: float = 0.0,
                 instance_prompt: str | None = None, seed: int = 0, style_captions: bool = True):
        if isinstance(label_columns, str):
            label_columns = (label_columns,)
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        clash = [c for c in label_columns if c in _RESERVED_KEYS]
        if clash:
            raise ValueError(f"label columns {clash} clash with item keys {list(_RESERVED_KEYS)}; rename them")
        if instance_prompt is not None and not instance_prompt.strip():
            raise ValueError("instance_prompt is empty; pass a prompt such as 'a photo of sks dog' or leave it out")

        self.source = str(source)
        self.style_captions = bool(style_captions)
        self.resolution = int(resolution)
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.caption_dropout = float(caption_dropout)
        self.instance_prompt = _clean_caption(instance_prompt) if instance_prompt else None
        self.seed = int(seed)
        self.epoch = 0
        self.label_columns = tuple(label_columns)
        self.label_names: dict[str, list[str]] = {}
        self.report = DataReport(source=self.source)
        self._hf: datasets.Dataset | None = None  # for `datasets` sources: image column undecoded
        self._hf_root: Path | None = None  # resolves relative image paths of local datasets
        self._expected_modes: frozenset[str] = frozenset()
        self._records: list[_Record] = []
        self._caption_column = caption_column
        self._image_column = image_column
        self._folder_columns: list[str] = []  # for error messages about image folders

        kind, target = _classify_source(self.source)
        if kind == "emoji":
            self._load_emoji(target, split)
        elif kind == "folder":
            self._load_folder(Path(target), split)
        else:
            self._load_hf(kind, target, split)
        self._finish()

    # ------------------------------------------------------------------ sources

    def _load_emoji(self, style: str, split: str | None) -> None:
        split = split or "train"
        self._expected_modes = frozenset({"P", "L"})  # storage format of the shipped PNGs
        if style == "all" and self.style_captions:
            import datasets
            from datasets.table import InMemoryTable

            table = with_style_captions(read_emoji_table(split, style))
            ds = datasets.Dataset(InMemoryTable(table), split=datasets.NamedSplit(split) if split != "all" else None)
        else:
            ds = load_emoji(split, style)
        # Ids from the full file, so "train" and "test" agree on what label 3 means.
        vocab_source = load_emoji("all", style) if self.label_columns else None
        self._from_hf_dataset(ds, vocab_sources=[vocab_source] if vocab_source is not None else [])

    def _load_hf(self, kind: str, target: str, split: str | None) -> None:
        import datasets

        vocab_sources: list[datasets.Dataset] = []
        try:
            if kind == "disk":
                self._hf_root = Path(target)
                loaded = datasets.load_from_disk(target)
            elif kind == "parquet":
                if split not in (None, "train"):
                    raise MissingSplitError(f"a single Parquet file ({target}) has no {split!r} split; read it whole "
                                            "(data.split=train, data.validation_split= to train without validation; "
                                            "in Python split=None)")
                self._hf_root = Path(target).parent
                loaded = datasets.load_dataset("parquet", data_files=target, split="train")
            elif kind == "datadir":
                self._hf_root = Path(target)
                loaded = datasets.load_dataset(target, split=split or "train")
            else:  # Hub name
                loaded = datasets.load_dataset(target, split=split or "train")
        except MissingSplitError:
            raise
        except (OSError, ValueError) as e:  # OSError includes FileNotFoundError and ConnectionError
            if kind == "hub":
                raise FileNotFoundError(
                    f"{target!r} is not a local folder or file, and loading it as a Hugging Face Hub dataset "
                    f"failed ({type(e).__name__}: {e}). Check the path or the dataset name and your network "
                    "(or HF_HUB_OFFLINE / a local save_to_disk copy).") from e
            raise ValueError(f"cannot load {target!r} as a datasets dataset: {e}") from e
        if isinstance(loaded, datasets.DatasetDict):
            name = split or "train"
            if name not in loaded:
                raise ValueError(f"{target} has no split {name!r}; available splits: {sorted(loaded)}")
            vocab_sources = list(loaded.values())
            loaded = loaded[name]
        elif split and kind == "disk" and split != "train":
            raise MissingSplitError(f"{target} holds a single dataset (no {split!r} split); read it whole "
                                    "(data.validation_split= to train without validation; in Python split=None)")
        self._from_hf_dataset(loaded, vocab_sources=vocab_sources)

    def _from_hf_dataset(self, ds: datasets.Dataset, vocab_sources: list) -> None:
        import datasets

        columns = list(ds.column_names)
        if self._image_column not in columns:
            raise ValueError(f"image column {self._image_column!r} not found in {self.source}; "
                             f"available columns: {columns} (pass image_column=...)")
        missing_labels = [c for c in self.label_columns if c not in columns]
        if missing_labels:
            raise ValueError(f"label column(s) {missing_labels} not found in {self.source}; available columns: {columns}")
        caption_col = self._caption_column
        if caption_col is not None and caption_col not in columns:
            if self.instance_prompt is None:
                raise ValueError(f"caption column {caption_col!r} not found in {self.source}; available columns: "
                                 f"{columns}. Pass caption_column=... (--caption-column), or --instance-prompt to "
                                 "give every image the same caption (DreamBooth)")
            caption_col = None

        feature = ds.features[self._image_column]
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(self._image_column, datasets.Image(decode=False))
        elif not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary",
                                                                             "large_binary")):
            raise ValueError(f"column {self._image_column!r} of {self.source} holds {feature}, not images; "
                             f"available columns: {columns}")
        keep = [self._image_column] + ([caption_col] if caption_col else []) + list(self.label_columns)
        ds = ds.select_columns(list(dict.fromkeys(keep)))
        self._hf = ds
        self._caption_column = caption_col

        # Stable ids for labels: ClassLabel names, else all values across the splits we can see.
        for col in self.label_columns:
            feat = ds.features[col]
            if isinstance(feat, datasets.ClassLabel):
                self.label_names[col] = list(feat.names)
            else:
                values: set[str] = set()
                for source in vocab_sources or [ds]:
                    values.update("" if v is None else str(v) for v in source[col])
                self.label_names[col] = sorted(values)

        batch_size = 256
        for start in range(0, len(ds), batch_size):
            batch = ds[start:start + batch_size]
            for offset in range(len(batch[self._image_column])):
                row = start + offset
                name = f"row {row}"
                image = batch[self._image_column][offset]
                caption = _caption_value(batch[caption_col][offset], self.report, name) if caption_col else None
                labels = []
                for col in self.label_columns:
                    value = batch[col][offset]
                    if isinstance(ds.features[col], datasets.ClassLabel):
                        # ClassLabel stores ids; -1 means "no label".
                        value = ds.features[col].names[value] if value is not None and value >= 0 else None
                    labels.append(value)
                self._add_candidate(_Record(name=name, row=row), self._hf_image_source(image), caption, labels)

    def _hf_image_source(self, cell: Any) -> str | bytes | None:
        """The bytes or file path behind an (undecoded) image cell."""
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return cell["bytes"]
            cell = cell.get("path")
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell)
        if isinstance(cell, str) and cell:
            path = Path(cell)
            if not path.is_absolute() and self._hf_root is not None:
                path = self._hf_root / path
            return str(path)
        return None

    def _load_folder(self, root: Path, split: str | None) -> None:
        # Absolute and normalised, so metadata paths ("./a.png", "sub/../a.png") match os.walk's.
        root = Path(os.path.abspath(root))
        if split:
            if (root / split).is_dir():
                root = root / split
            elif split != "train":
                raise MissingSplitError(f"no {split!r} subfolder in {root}; to read the whole folder set "
                                        "data.validation_split= (train without validation) or make a "
                                        f"{split}/ subfolder (in Python: split=None)")
        self.source = str(root)
        self.report.source = self.source

        files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root):
            # Hidden folders (.git, .ipynb_checkpoints, .cache) and files are not data.
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]

        metadata: dict[Path, dict] = {}
        for meta_path in (f for f in files if f.name == METADATA_FILE):
            self._read_metadata(meta_path, metadata)
        used: set[Path] = {f for f in files if f.name == METADATA_FILE}
        images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
        known = set(images)
        images += [p for p in metadata if p not in known]  # listed in metadata with another extension

        def rel(p: Path) -> str:  # relpath, not relative_to: metadata may point outside the folder
            return Path(os.path.relpath(p, root)).as_posix()

        images.sort(key=rel)

        caption_col = self._caption_column
        available = {"file_name"} | {k for row in metadata.values() for k in row}
        missing_labels = [c for c in self.label_columns if c not in available]
        if missing_labels:
            raise ValueError(f"label column(s) {missing_labels} not found in {root}/**/{METADATA_FILE}; "
                             f"available columns: {sorted(available)}")
        self._folder_columns = sorted(available)

        for path in images:
            name = rel(path)
            row = metadata.get(path, {})
            caption = None
            if caption_col and caption_col in row:
                caption = _caption_value(row[caption_col], self.report, name)
            if caption is None:
                for ext in CAPTION_EXTENSIONS:
                    sidecar = path.with_suffix(ext)
                    if sidecar.is_file():
                        used.add(sidecar)
                        caption = _clean_caption(_decode_caption(sidecar.read_bytes(), self.report, name))
                        break
            labels = [row.get(c) for c in self.label_columns]
            self._add_candidate(_Record(name=name, path=str(path)), str(path), caption, labels)
        used.update(images)
        # Sidecars of skipped images still count as used: they are captions, not stray files.
        used.update(p.with_suffix(e) for p in images for e in CAPTION_EXTENSIONS)
        for f in files:
            if f not in used:
                self.report.note("ignored_files", rel(f))

        for i, col in enumerate(self.label_columns):
            self.label_names[col] = sorted({"" if r.labels[i] is None else str(r.labels[i]) for r in self._records})

    def _read_metadata(self, meta_path: Path, metadata: dict[Path, dict]) -> None:
        """Parse one metadata.jsonl; ``file_name`` is relative to the file's folder."""
        for lineno, raw in enumerate(meta_path.read_bytes().splitlines(), 1):
            if not raw.strip():
                continue
            where = f"{meta_path.name}:{lineno}"
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                self.report.note("invalid_utf8_caption", where)
                text = raw.decode("utf-8", errors="replace")
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                self.report.note("bad_metadata_lines", where)
                continue
            # normpath so "./a.png" and "sub/../a.png" match the paths os.walk produces.
            metadata[Path(os.path.normpath(meta_path.parent / row["file_name"]))] = row

    # ------------------------------------------------------------------ validation

    def _add_candidate(self, record: _Record, src: str | bytes | None, caption: Any,
                       labels: Sequence[Any]) -> None:
        """Validate one image, fix its caption, and keep it or count why not."""
        report = self.report
        report.seen += 1
        if src is None:
            report.note("skipped_missing_file", record.name)
            return
        if isinstance(src, str) and not os.path.isfile(src):
            report.note("skipped_missing_file", record.name)
            return
        try:
            im, (width, height) = _read_image(src, draft_size=self.resolution, verify=True)
            _to_rgb(im, report, record.name, self._expected_modes)
        except _Skip as e:
            report.note(e.counter, record.name)
            logger.debug("skipping %s: %s", record.name, e)
            return
        if min(width, height) < self.resolution:
            report.note("upscaled", record.name)

        if isinstance(caption, str) and caption == "":
            report.note("empty_caption", record.name)
            caption = None if self.instance_prompt else ""
        if caption is None:
            if self.instance_prompt is not None:
                report.note("instance_prompt_used")
                caption = self.instance_prompt
            else:
                report.note("missing_caption", record.name)
                caption = ""
        for value in labels:
            if value is None or value == "":
                report.note("missing_label", record.name)
        record.caption = caption
        record.labels = tuple("" if v is None else str(v) for v in labels)
        report.kept += 1
        self._records.append(record)

    def _finish(self) -> None:
        """Map labels to ids, check the result is usable, and log the report."""
        if not self.report.seen:
            raise ValueError(f"no images found in {self.source} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} "
                             f"files, also in subfolders, and {METADATA_FILE} entries)")
        if not self._records:
            raise ValueError(f"no usable images in {self.source}.\n{self.report.summary()}")
        if self.instance_prompt is None and not any(r.caption for r in self._records):
            cols = self._folder_columns or (list(self._hf.column_names) if self._hf is not None else [])
            raise ValueError(
                f"no captions found in {self.source} (caption column {self._caption_column!r}; available columns: "
                f"{cols}; sidecar {'/'.join(CAPTION_EXTENSIONS)} files). Pass --instance-prompt "
                "(instance_prompt='a photo of sks dog': every image gets that caption, as in DreamBooth) "
                f"or add captions ({METADATA_FILE} with file_name/text, or a .txt next to each image).")
        index = {col: {name: i for i, name in enumerate(self.label_names[col])} for col in self.label_columns}
        for r in self._records:
            r.labels = tuple(index[col][v] for col, v in zip(self.label_columns, r.labels))

        report = self.report
        if report.skipped or report.caption_problems or report.load_errors:
            logger.warning("%s", report.summary())
        elif report.converted or report.alpha_composited or report.ignored_files or report.bad_metadata_lines:
            logger.info("%s", report.summary())
        else:
            logger.debug("%s", report.summary())

    # ------------------------------------------------------------------ torch Dataset API

    def __len__(self) -> int:
        return len(self._records)

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops/flips/dropout drawn for every item (call once per epoch).

        DataLoader workers get a copy of the dataset when an iterator is created, so call
        this before iterating (and avoid ``persistent_workers=True``, which would keep the old epoch).
        """
        self.epoch = int(epoch)

    @property
    def captions(self) -> list[str]:
        """The stored caption of every item (the first one where an item has several)."""
        return [r.caption if isinstance(r.caption, str) else r.caption[0] for r in self._records]

    def generator(self, index: int) -> torch.Generator:
        """The random generator used for item ``index`` in the current epoch."""
        return torch.Generator().manual_seed(_seed_for(self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self._records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        index %= n
        # A file that passed validation can still vanish or change during a long run; rather
        # than kill training, use the next item and say so.
        for attempt in range(min(n, 10)):
            i = (index + attempt) % n
            record = self._records[i]
            try:
                image = _to_rgb(self._load(record), expected_modes=self._expected_modes)
                index = i
                break
            except (_Skip, OSError) as e:
                self.report.note("load_errors", record.name)
                logger.warning("could not read %s (%s); using item %d instead", record.name, e, (i + 1) % n)
        else:
            raise RuntimeError(f"{min(n, 10)} consecutive items of {self.source} failed to load; "
                               "has the data changed since the dataset was built?")

        g = self.generator(index)
        pixel_values = self._transform(image, g)
        caption = record.caption
        if not isinstance(caption, str):  # several captions: draw one per epoch
            caption = caption[int(torch.randint(len(caption), (1,), generator=g))]
        if self.caption_dropout > 0 and float(torch.rand((), generator=g)) < self.caption_dropout:
            caption = ""
        item: dict[str, Any] = {"pixel_values": pixel_values, "caption": caption, "index": index}
        for col, value in zip(self.label_columns, record.labels):
            item[col] = value
        return item

    # ------------------------------------------------------------------ for caches built item by item

    def rgb(self, index: int) -> Image.Image:
        """Item ``index``'s image as 8-bit RGB at its own size (EXIF rotation applied, no transform)."""
        return _to_rgb(self._load(self._records[index]), expected_modes=self._expected_modes)

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of :meth:`rgb` from the file header only (nothing decoded)."""
        record = self._records[index]
        src = record.path if record.path is not None else self._hf_image_source(self._hf[record.row][self._image_column])
        with _open(src) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations by 90°: exif_transpose swaps them
                w, h = h, w
        return w, h

    def identity(self, index: int) -> str:
        """What identifies item ``index``'s content without decoding it, for cache keys: the file's
        path, size and modification time, or the ``datasets`` fingerprint and row."""
        record = self._records[index]
        if record.path is not None:
            st = os.stat(record.path)
            return f"{record.path}:{st.st_size}:{st.st_mtime_ns}"
        return f"{getattr(self._hf, '_fingerprint', self.source)}:{record.row}"

    def _load(self, record: _Record) -> Image.Image:
        if record.path is not None:
            return _read_image(record.path, draft_size=self.resolution)[0]
        assert self._hf is not None and record.row is not None
        src = self._hf_image_source(self._hf[record.row][self._image_column])
        if src is None:
            raise _Skip("skipped_missing_file", "no image data")
        return _read_image(src, draft_size=self.resolution)[0]

    def _transform(self, image: Image.Image, g: torch.Generator) -> torch.Tensor:
        """Resize the shorter side to R, crop R×R, optionally flip; float32 CHW in [-1, 1]."""
        r = self.resolution
        w, h = image.size
        scale = r / min(w, h)
        new_w, new_h = max(r, round(w * scale)), max(r, round(h * scale))
        if (new_w, new_h) != (w, h):
            # LANCZOS avoids aliasing when shrinking; BICUBIC is smoother when enlarging.
            resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
            image = image.resize((new_w, new_h), resample)
        if self.center_crop:
            left, top = (new_w - r) // 2, (new_h - r) // 2
        else:
            left = int(torch.randint(new_w - r + 1, (1,), generator=g))
            top = int(torch.randint(new_h - r + 1, (1,), generator=g))
        image = image.crop((left, top, left + r, top + r))
        # Flipping is off by default: it mirrors text, flags and asymmetric emoji.
        if self.random_flip and float(torch.rand((), generator=g)) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        return arr.permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0).contiguous()

    def __repr__(self) -> str:
        return (f"ImageCaptionDataset(source={self.source!r}, items={len(self)}, resolution={self.resolution}, "
                f"skipped={self.report.skipped})")


def _classify_source(source: str) -> tuple[str, str]:
    """Return (kind, target): emoji | folder | disk | parquet | datadir | hub."""
    if source == "emoji" or source.startswith("emoji:"):
        style = source.partition(":")[2] or "noto"
        if style not in EMOJI_STYLES:
            raise ValueError(f"unknown emoji style in {source!r}; allowed: "
                             f"{['emoji'] + [f'emoji:{s}' for s in EMOJI_STYLES]}")
        return "emoji", style
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".parquet":
            return "parquet", str(path)
        raise ValueError(f"{source} is a file; pass a folder of images, a datasets folder, a .parquet file, "
                         "'emoji' or a Hub dataset name")
    if path.is_dir():
        if any((path / m).is_file() for m in _SAVE_TO_DISK_MARKERS):
            return "disk", str(path)
        has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS or p.name == METADATA_FILE for p in path.rglob("*"))
        has_data_files = any(p.suffix.lower() in _DATA_FILE_EXTENSIONS and p.name != METADATA_FILE
                             for p in path.rglob("*"))
        if not has_images and has_data_files:
            return "datadir", str(path)
        return "folder", str(path)
    # "user/name" is a Hub id, but "./x", "/x", "~/x", "../x" or an OS path separator
    # other than "/" can only mean a local path that does not exist.
    looks_local = (source.startswith((".", "/", "~")) or source.count("/") > 1
                   or (os.sep != "/" and os.sep in source))
    if looks_local:
        raise FileNotFoundError(f"dataset folder not found: {source}")
    return "hub", source


def build_dataset(source: str, *, split: str | None = None, image_column: str = "image",
                  caption_column: str | None = "text", label_columns: Sequence[str] = (), resolution: int = 64,
                  center_crop: bool = True, random_flip: bool = False, caption_dropout: float = 0.0,
                  instance_prompt: str | None = None, seed: int = 0,
                  style_captions: bool = True) -> ImageCaptionDataset:
    """Build a training dataset from ``source``.

    Args:
        source: ``"emoji"`` (Noto) / ``"emoji:<style>"`` (symbola, twemoji, openmoji, fluent, or
            all = noto + twemoji + openmoji + fluent); a local folder (``metadata.jsonl`` with
            ``file_name`` + caption column, or images with sidecar ``.txt``/``.caption`` files,
            nested folders included, or bare images with ``instance_prompt``); a
            ``save_to_disk`` folder; a ``.parquet`` file; or a Hub dataset name.
        split: emoji / DatasetDict / Hub split (default "train"); for image folders a
            subfolder of that name if it exists (``"train"`` falls back to the whole folder).
        image_column, caption_column: columns of ``datasets`` sources (``caption_column`` is
            also the caption key in ``metadata.jsonl``).  ``caption_column=None`` reads no
            captions (use with ``instance_prompt``).
        label_columns: extra columns returned as integer ids; ``dataset.label_names[col]``
            lists the sorted names (ClassLabel names where the column is one).
        resolution: output side R; the shorter side is resized to R, then an R×R crop is taken.
        center_crop: centre crop (default) or a random crop.
        random_flip: random horizontal flips (off by default: flags, text and most emoji are
            not mirror-symmetric).
        caption_dropout: probability of replacing the caption by "" (for classifier-free guidance).
        instance_prompt: caption for every image that has none (DreamBooth).
        seed: base seed of the per-(epoch, index) generators.
        style_captions: for ``"emoji:all"`` only: every image appears twice, with its plain CLDR
            name and with ``"<name>, <style> style"`` (``False``: once, plain).

    Raises:
        FileNotFoundError: missing folder/file, or an unknown Hub dataset.
        ValueError: no usable images, no captions and no ``instance_prompt``, or a missing column
            (the message lists the available columns).
    """
    return ImageCaptionDataset(source, split=split, image_column=image_column, caption_column=caption_column,
                               label_columns=label_columns, resolution=resolution, center_crop=center_crop,
                               random_flip=random_flip, caption_dropout=caption_dropout,
                               instance_prompt=instance_prompt, seed=seed, style_captions=style_captions)


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items: ``pixel_values`` (B×3×R×R), ``caption`` (list), ``index`` and labels (long tensors)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {
        "pixel_values": torch.stack([b["pixel_values"] for b in batch]).contiguous(),
        "caption": [b["caption"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.long),
    }
    for key in batch[0]:
        if key not in out:
            out[key] = torch.tensor([b[key] for b in batch], dtype=torch.long)
    return out
