"""A saved localist model (``train.save_model``) run on any text with the locality it was trained under.

The folder holds a stock transformers GPT-2, its tokenizer, ``localist_trial.json`` (trial config and
per-layer lambdas) and its model card. Blocks are found in the text the way training found them: the
tokenizer's offsets, the sentence and paragraph starts of the text, the trial's partitioner. The
semantic partition is causal (whether keys j <= t share query t's block never depends on the text after
t), so blocks computed for a growing text only ever extend: generation can recompute them every token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from localist.attention import LocalityContext
from localist.blocks import block_ids, sentence_starts, token_boundaries
from localist.config import ConfigError, TrialConfig
from localist.model import TRIAL_FILE, load_localist


@dataclass
class SavedModel:
    path: str
    model: torch.nn.Module
    tokenizer: object  # a transformers fast tokenizer
    config: TrialConfig
    lambdas: list[float]
    trial_id: str
    step: int

    @classmethod
    def load(cls, path: str) -> "SavedModel":
        """A local model folder written by ``save_model`` (a sweep's trials/<run_id>/model)."""
        from transformers import AutoTokenizer

        meta_file = os.path.join(path, TRIAL_FILE)
        if not os.path.isfile(meta_file):
            raise ConfigError(f"{path}: not a saved localist model (no {TRIAL_FILE}); give a folder written by "
                              "train.save_model, e.g. <sweep>/trials/<run_id>/model")
        with open(meta_file) as f:
            meta = json.load(f)
        model = load_localist(path)
        model.eval()
        return cls(path=path, model=model, tokenizer=AutoTokenizer.from_pretrained(path),
                   config=TrialConfig.model_validate(meta["config"]), lambdas=[float(x) for x in meta["lambdas"]],
                   trial_id=meta["trial_id"], step=int(meta["step"]))

    @property
    def n_layer(self) -> int:
        return len(self.lambdas)

    @property
    def context_len(self) -> int:
        return int(getattr(self.model.config, "n_positions", 0) or self.model.config.max_position_embeddings)

    @property
    def window(self) -> int | None:
        loc = self.config.locality
        return loc.window if loc.partition == "window" else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token's own text: the text of ids[:i + 1] past that of ids[:i] (whole characters, so
        they add up to the decoded text even where a character spans several byte-level tokens)."""
        out, before = [], ""
        for i in range(len(ids)):
            now = self.tokenizer.decode(ids[: i + 1])
            out.append(now[len(before):])
            before = now
        return out

    def blocks(self, ids: list[int]) -> np.ndarray:
        """Block id per token of the text these ids spell, as training computes them for a sequence
        (all zeros for the window partitioner, which needs none)."""
        pieces = self.token_texts(ids)
        starts = np.cumsum([0] + [len(p) for p in pieces[:-1]]).astype(np.int64)
        flags = token_boundaries(starts, sentence_starts("".join(pieces)))
        loc = self.config.locality
        return block_ids(flags, loc.partition, loc.min_len, loc.max_len)

    def context(self, blocks: np.ndarray | None, locality: bool = True, **kw) -> LocalityContext:
        """The locality of one forward pass over one sequence: the trained lambdas, or all 0 (plain
        causal attention, statistics still measured against the same blocks) when ``locality`` is False."""
        lambdas = self.lambdas if locality else [0.0] * self.n_layer
        block = None if self.window or blocks is None else torch.as_tensor(blocks, dtype=torch.long)[None]
        return LocalityContext(lambdas=lambdas, block=block, window=self.window,
                               mechanism=self.config.locality.mechanism, **kw)

    @torch.no_grad()
    def forward(self, ids: list[int], locality: bool = True, **kw) -> tuple[torch.Tensor, LocalityContext]:
        """Logits (T, vocab) of one sequence and the context it ran with (statistics, samples)."""
        ctx = self.context(self.blocks(ids), locality, **kw)
        logits = self.model(input_ids=torch.tensor([ids]), locality=ctx).logits[0]
        return logits, ctx

    def logits(self, text: str, locality: bool = True) -> torch.Tensor:
        """(T, vocab) next-token logits of a text, with the trained locality (or without)."""
        ids = self.encode(text)
        if not ids:
            raise ConfigError("the text has no tokens")
        return self.forward(ids[: self.context_len], locality)[0]
