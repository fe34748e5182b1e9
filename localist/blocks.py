"""Block partitioners: which keys count as "in block" for each query.

Blocks are computed per training sequence from the positions where a sentence or paragraph
starts (found in the text, mapped to tokens through offsets), so they are deterministic and
the same at training and evaluation time. The `window` partitioner needs no ids: its band is
purely positional.
"""

from __future__ import annotations

import re

import numpy as np
import torch

# Bump when block_ids changes what it returns: a corpus cache keeps computed ids under this version.
BLOCK_IDS_VERSION = 1

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before white space,
# or at a paragraph break. Verse numbers and line breaks inside a paragraph are not ends.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n\s*\n")


def sentence_starts(text: str) -> np.ndarray:
    """Character offsets at which a new sentence (or paragraph) begins."""
    starts = []
    n = len(text)
    for m in _SENTENCE_END.finditer(text):
        i = m.end()
        while i < n and text[i].isspace():
            i += 1
        if i < n:
            starts.append(i)
    return np.unique(np.asarray(starts, dtype=np.int64))


def token_boundaries(token_starts: np.ndarray, char_starts: np.ndarray) -> np.ndarray:
    """Boolean per token: True for the token that contains a sentence's first character.

    "Contains" (the last token starting at or before it) works whether a byte-level tokenizer
    reports offsets with or without the leading space it folds into the word.
    """
    flags = np.zeros(len(token_starts), dtype=bool)
    if len(char_starts) and len(token_starts):
        idx = np.searchsorted(token_starts, char_starts, side="right") - 1
        flags[idx[idx >= 0]] = True
    return flags


def sentence_blocks(boundary: np.ndarray) -> np.ndarray:
    """Block id per token: a new block at every sentence start (position 0 always starts one)."""
    b = boundary.copy()
    if len(b):
        b[0] = False
    return np.cumsum(b).astype(np.int32)


def semantic_blocks(boundary: np.ndarray, min_len: int, max_len: int) -> np.ndarray:
    """Adaptive blocks: cut at sentence starts, merging short sentences and splitting long
    ones, so that every block but a sequence's last has between min_len and max_len tokens.

    Greedy from the left: cut at the first sentence start at least min_len tokens after the
    current block's start, or at max_len when none comes in time. Each cut depends only on
    sentence starts up to that cut, so the partition is causal: whether keys j <= t share query
    t's block never depends on the text after t. The price is that a sequence's last block may
    be shorter than min_len (it is cut off by the sequence end, not by the text).
    """
    n = len(boundary)
    cand = np.flatnonzero(boundary)
    lengths: list[int] = []
    start = 0
    while start < n:
        lo, hi = start + min_len, start + max_len
        k = np.searchsorted(cand, lo, side="left")
        cut = min(int(cand[k]) if k < len(cand) and cand[k] <= hi else hi, n)
        lengths.append(cut - start)
        start = cut
    return np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)


def block_ids(boundary: np.ndarray, partition: str, min_len: int, max_len: int) -> np.ndarray:
    if partition == "semantic":
        return semantic_blocks(boundary, min_len, max_len)
    if partition == "sentence":
        return sentence_blocks(boundary)
    return np.zeros(len(boundary), dtype=np.int32)  # window: ids unused


def in_block(block: torch.Tensor | None, seq_len: int, window: int | None, device=None) -> torch.Tensor:
    """Boolean (B or 1, 1, T, T): key j is in query i's block. Causality is applied separately."""
    if window is not None:
        pos = torch.arange(seq_len, device=device)
        return ((pos[:, None] - pos[None, :]) < window)[None, None]
    return (block[:, :, None] == block[:, None, :])[:, None]
