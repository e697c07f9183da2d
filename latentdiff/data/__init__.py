"""Training data for latentdiff: the shipped emoji dataset and a tolerant image–caption loader.

>>> from latentdiff.data import build_dataset, collate, load_emoji
>>> ds = build_dataset("emoji", split="train", resolution=64, caption_dropout=0.1)
>>> print(ds.report.summary())
>>> loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, collate_fn=collate)

The emoji files are built by ``python -m latentdiff.data.build_emoji`` (see ``emoji/README.md``).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from latentdiff.data.datasets import (
        EMOJI_ALL_STYLES,
        EMOJI_SPLITS,
        EMOJI_STYLES,
        DataReport,
        ImageCaptionDataset,
        build_dataset,
        collate,
        emoji_parquet_path,
        emoji_parquet_paths,
        load_emoji,
        read_emoji_table,
        style_caption,
        with_style_captions,
    )

__all__ = [
    "EMOJI_ALL_STYLES",
    "EMOJI_SPLITS",
    "EMOJI_STYLES",
    "DataReport",
    "ImageCaptionDataset",
    "build_dataset",
    "collate",
    "emoji_parquet_path",
    "emoji_parquet_paths",
    "load_emoji",
    "read_emoji_table",
    "style_caption",
    "with_style_captions",
]


def __getattr__(name: str):
    # Lazy, like `latentdiff` itself: `python -m latentdiff.data.build_emoji` and the CLI's
    # --help should not pay for importing torch and datasets.
    if name in __all__:
        from latentdiff.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'latentdiff.data' has no attribute {name!r}")
