"""`localist inspect`: a saved model's attention on one's own text, with the locality it was trained under.

One forward pass over the text (its first context-length tokens) with the trained lambdas and the
blocks the trial's partitioner finds in it, keeping every layer's head-mean attention map; with
``compare`` a second pass with every lambda at 0 (the unconstrained model, same weights). Written to
the output folder:

  inspect.html               the text with its block boundaries marked and each token's loss, a table of
                             per-layer lambda, in-block attention mass and entropy, and the figures
  attention-layers.png       one panel per layer (head-mean attention, block boundaries drawn)
  attention-layers-no-locality.png  the same without locality (``compare``)
  inspect.json               the same numbers for programs: tokens, blocks, per-token loss, per-layer stats
"""

from __future__ import annotations

import base64
import html
import io as pyio
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from localist.config import ConfigError
from localist.model_card import partition_text, schedule_text
from localist.saved import SavedModel

HTML_FILE, JSON_FILE = "inspect.html", "inspect.json"
FIGURES = {True: "attention-layers.png", False: "attention-layers-no-locality.png"}  # with locality -> file name
LABELLED_TOKENS = 48  # axis labels name the tokens up to this many


@dataclass
class Pass:
    """One forward pass over the text: with the trained locality or without."""

    locality: bool
    loss: list[float]  # per token: NLL of predicting it from the tokens before (nan for the first)
    attention: list[np.ndarray]  # per layer: (T, T) head-mean attention
    in_block_mass: list[float]
    entropy_bits: list[float]

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.loss[1:])) if len(self.loss) > 1 else math.nan


def run_pass(saved: SavedModel, ids: list[int], locality: bool) -> Pass:
    T = len(ids)
    logits, ctx = saved.forward(ids, locality, collect_stats=True, sample_layers=tuple(range(saved.n_layer)),
                                sample_len=T)
    nll = F.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:]), reduction="none")
    stats = [ctx.stats[layer].means() for layer in range(saved.n_layer)]
    return Pass(locality=locality, loss=[math.nan] + nll.tolist(),
                attention=[ctx.samples[layer].numpy() for layer in range(saved.n_layer)],
                in_block_mass=[s["in_block_mass"] for s in stats], entropy_bits=[s["entropy_bits"] for s in stats])


def block_starts(blocks: np.ndarray) -> list[int]:
    """Token positions where a block begins (0 always does)."""
    return [0] + [int(i) for i in np.flatnonzero(np.diff(blocks)) + 1]


def _figure(saved: SavedModel, p: Pass, tokens: list[str], starts: list[int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, T = saved.n_layer, len(tokens)
    cols = min(L, 4)
    rows = math.ceil(L / cols)
    size = 3.2 if T <= LABELLED_TOKENS else 2.6
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.6, size * rows + 0.6), squeeze=False)
    for layer, ax in enumerate(axes.flat):
        if layer >= L:
            ax.axis("off")
            continue
        att = np.ma.masked_where(np.triu(np.ones((T, T), dtype=bool), 1), p.attention[layer])
        ax.imshow(att, cmap="viridis", vmin=0.0, vmax=max(float(att.max()), 1e-9), interpolation="nearest")
        for b in starts[1:]:  # block boundaries: a new block starts at query/key b
            ax.axhline(b - 0.5, color="white", lw=0.8)
            ax.axvline(b - 0.5, color="white", lw=0.8)
        lam = saved.lambdas[layer] if p.locality else 0.0
        ax.set_title(f"layer {layer}: lambda {lam:.3f}, in-block {p.in_block_mass[layer]:.2f}", fontsize=9)
        if T <= LABELLED_TOKENS:
            labels = [t.replace("\n", "\\n") for t in tokens]
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
        else:
            ax.set_xlabel("key", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
    what = "with the trained locality" if p.locality else "without locality (every lambda 0)"
    fig.suptitle(f"{saved.trial_id}: head-mean attention {what}; white lines: block boundaries", fontsize=10)
    fig.tight_layout()
    buf = pyio.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _colour(loss: float, top: float) -> str:
    """Token background: white at loss 0, red at the highest loss of the text."""
    if not math.isfinite(loss):
        return "#ffffff"
    a = min(loss / top, 1.0) if top > 0 else 0.0
    return f"rgba(220, 40, 40, {0.08 + 0.62 * a:.2f})"


def _html(saved: SavedModel, tokens: list[str], blocks: np.ndarray, passes: list[Pass], figures: dict[bool, bytes]) -> str:
    e = html.escape
    trained = passes[0]
    top = max((x for x in trained.loss if math.isfinite(x)), default=1.0)
    starts = set(block_starts(blocks))
    spans = []
    for i, tok in enumerate(tokens):
        cls = "tok start" if i in starts else "tok"
        tip = f"token {i}, block {int(blocks[i])}" + (f", loss {trained.loss[i]:.3f}" if i else "")
        spans.append(f'<span class="{cls}" data-pos="{i}" data-block="{int(blocks[i])}" title="{e(tip)}" '
                     f'style="background:{_colour(trained.loss[i], top)}">{e(tok)}</span>')
    head = "<tr><th>layer</th><th>lambda</th><th>in-block mass</th><th>entropy (bits)</th>"
    if len(passes) > 1:
        head += "<th>in-block mass, no locality</th><th>entropy, no locality</th>"
    rows = []
    for layer in range(saved.n_layer):
        cells = [f"layer {layer}", f"{saved.lambdas[layer]:.4f}", f"{trained.in_block_mass[layer]:.3f}",
                 f"{trained.entropy_bits[layer]:.3f}"]
        for p in passes[1:]:
            cells += [f"{p.in_block_mass[layer]:.3f}", f"{p.entropy_bits[layer]:.3f}"]
        rows.append(f'<tr id="layer-{layer}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    token_rows = []
    for i, tok in enumerate(tokens):
        cells = [str(i), e(repr(tok)), str(int(blocks[i])), "start" if i in starts else "",
                 "" if i == 0 else f"{trained.loss[i]:.3f}"]
        cells += ["" if i == 0 else f"{p.loss[i]:.3f}" for p in passes[1:]]
        token_rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    loss_head = "<th>loss, no locality</th>" if len(passes) > 1 else ""
    figs = "".join(
        f'<figure><img alt="{FIGURES[loc]}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{FIGURES[loc]}</figcaption></figure>" for loc, png in figures.items())
    means = "; ".join(f"{'with locality' if p.locality else 'without locality'} {p.mean_loss:.4f}" for p in passes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>localist inspect: {e(saved.trial_id)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 1em auto; }}
.text {{ font-family: monospace; white-space: pre-wrap; line-height: 1.9; }}
.tok {{ border-left: 1px dotted #ccc; }}
.tok.start {{ border-left: 3px solid #1f4e99; margin-left: 2px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{e(saved.trial_id)}: attention on your text</h1>
<p>Model <code>{e(saved.path)}</code>, step {saved.step}: {e(schedule_text(saved.config))};
{e(partition_text(saved.config))}; mechanism <code>{e(saved.config.locality.mechanism)}</code>.
{len(tokens)} tokens in {len(starts)} blocks. Mean loss per predicted token (nats): {means}.</p>
<h2>Text</h2>
<p>Each block starts at a blue bar; a token's colour is its loss (how surprised the model was by it,
with the trained locality); hover for the numbers.</p>
<div class="text">{"".join(spans)}</div>
<h2>Layers</h2>
<table>{head}</tr>{"".join(rows)}</table>
<h2>Attention</h2>
{figs}
<h2>Tokens</h2>
<table><tr><th>position</th><th>token</th><th>block</th><th></th><th>loss</th>{loss_head}</tr>{"".join(token_rows)}</table>
</body></html>
"""


def inspect(saved: SavedModel, text: str, out: str, compare: bool = False, log=print) -> dict:
    """Run the model on ``text`` and write the files into ``out``; returns inspect.json's content."""
    ids = saved.encode(text)
    if len(ids) < 2:
        raise ConfigError("inspect: the text needs at least two tokens")
    if len(ids) > saved.context_len:
        log(f"[inspect] the text has {len(ids)} tokens; looking at the first {saved.context_len} (the model's context)")
        ids = ids[: saved.context_len]
    tokens = saved.token_texts(ids)
    blocks = saved.blocks(ids)
    passes = [run_pass(saved, ids, True)] + ([run_pass(saved, ids, False)] if compare else [])
    starts = block_starts(blocks)
    figures = {p.locality: _figure(saved, p, tokens, starts) for p in passes}
    os.makedirs(out, exist_ok=True)
    for loc, png in figures.items():
        with open(os.path.join(out, FIGURES[loc]), "wb") as f:
            f.write(png)
    with open(os.path.join(out, HTML_FILE), "w", encoding="utf-8") as f:
        f.write(_html(saved, tokens, blocks, passes, figures))
    result = {
        "model": saved.path, "trial_id": saved.trial_id, "lambdas": saved.lambdas, "tokens": tokens,
        "ids": ids, "blocks": blocks.tolist(), "block_starts": starts,
        "passes": [{"locality": p.locality, "mean_loss": p.mean_loss,
                    "loss": [None if not math.isfinite(x) else x for x in p.loss],
                    "layers": [{"layer": i, "lambda": saved.lambdas[i] if p.locality else 0.0,
                                "in_block_mass": p.in_block_mass[i], "entropy_bits": p.entropy_bits[i]}
                               for i in range(saved.n_layer)]} for p in passes],
    }
    with open(os.path.join(out, JSON_FILE), "w") as f:
        json.dump(result, f, indent=1)
    for p in passes:
        what = "with locality" if p.locality else "no locality "
        masses = " ".join(f"{m:.2f}" for m in p.in_block_mass)
        log(f"[inspect] {what}: mean loss {p.mean_loss:.4f}; in-block mass by layer {masses}")
    log(f"[inspect] {len(tokens)} tokens, {len(starts)} blocks -> {os.path.join(out, HTML_FILE)}")
    return result
