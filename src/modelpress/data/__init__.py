"""Offline datasets and user data files."""

from .datasets import (
    TextDataset,
    TextSplits,
    package_dir,
    political_speeches,
    read_lm_text,
    read_text_file,
    rotten_tomatoes,
    split_dataset,
)

__all__ = [
    "TextDataset",
    "TextSplits",
    "package_dir",
    "political_speeches",
    "read_lm_text",
    "read_text_file",
    "rotten_tomatoes",
    "split_dataset",
]
