"""`localist generate`: text from a saved model with the locality it was trained under, beside plain generation.

With locality, every new token runs the whole sequence again (no key/value cache: the localist attention
needs the blocks of every query) with the blocks recomputed for the text so far; the partitions are
causal, so they only extend as tokens arrive and every earlier query keeps the blocks it had. Plain
generation runs the same loop with no locality context (stock causal attention), so the two differ only
in the attention. Greedy unless a temperature is given (then sampled, seeded, optionally top-k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from localist.config import ConfigError
from localist.saved import SavedModel


@dataclass
class Generated:
    locality: bool
    prompt_ids: list[int]
    ids: list[int]  # prompt and new tokens
    text: str  # the new tokens' text

    @property
    def new_ids(self) -> list[int]:
        return self.ids[len(self.prompt_ids):]


@torch.no_grad()
def generate(saved: SavedModel, prompt: str, max_new_tokens: int = 40, locality: bool = True,
             temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> Generated:
    prompt_ids = saved.encode(prompt)
    if not prompt_ids:
        raise ConfigError("generate: --prompt has no tokens")
    if len(prompt_ids) >= saved.context_len:
        raise ConfigError(f"generate: the prompt has {len(prompt_ids)} tokens, the model's context {saved.context_len}")
    gen = torch.Generator().manual_seed(seed)
    eos = saved.tokenizer.eos_token_id
    ids = list(prompt_ids)
    while len(ids) - len(prompt_ids) < max_new_tokens and len(ids) < saved.context_len:
        if locality:
            logits = saved.forward(ids, True)[0][-1]
        else:
            logits = saved.model(input_ids=torch.tensor([ids])).logits[0, -1]
        if temperature > 0:
            logits = logits.float() / temperature
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        else:
            nxt = int(logits.argmax())
        ids.append(nxt)
        if nxt == eos:
            break
    return Generated(locality, prompt_ids, ids, saved.tokenizer.decode(ids[len(prompt_ids):]))


def both(saved: SavedModel, prompt: str, plain: bool = True, **kw) -> list[Generated]:
    """Generation with the trained locality, then (``plain``) without."""
    return [generate(saved, prompt, locality=True, **kw)] + ([generate(saved, prompt, locality=False, **kw)] if plain else [])
