"""The paper our sweeps test (Diederich 2025, "Progressive Localisation in Localist LLMs", arXiv
2511.18375), in one place: its published headline figures, the model it localises (GPT-2 small),
the schedule and comparator its figures are about, and the rule that decides whether a run is
large enough for the paper's figures to stand beside ours.

Everything here is quoted or decided, never computed from our results.
"""

from __future__ import annotations

from localist.schedules import POWER_NAMES

CITATION = 'Diederich, "Progressive Localisation in Localist LLMs" (arXiv 2511.18375)'
# The paper's v1 abstract: shown beside ours, never computed.
PAPER_V1 = {"quintic_ppl": 14.64, "quintic_ratio": 1.89, "uniform_ratio": 6.6}
QUINTIC = POWER_NAMES[5]  # the schedule of the paper's headline figure
UNIFORM_STRICT = "uniform-strict"  # our comparator for the paper's earlier uniform localist models

GPT2_SMALL_PARAMS = 124_439_808  # GPT-2 small with its tied 50257 x 768 embedding
# OpenAI published no token count for WebText (40 GB of text); its open reproduction
# OpenWebText is about 9.0e9 GPT-2 tokens (nanoGPT's prepare script), used as the reference.
GPT2_SMALL_TOKENS = 9.0e9
# The rule: the paper's figures are shown beside ours only when our model has at least this
# fraction of GPT-2 small's parameters; smaller runs cannot confirm or refute them.
COMPARABLE_FRACTION = 0.10


def scale_gap(prov: dict | None) -> dict:
    """Our scale against GPT-2 small from a provenance record: fractions, whether the paper's
    figures may be shown, and one sentence that says so (also without a record)."""
    if prov is None:
        return {"comparable": False, "statement": "Scale: no provenance record, so the scale gap to the "
                "paper's GPT-2 small is unknown; the paper's figures are left out."}
    params, tokens = prov["model"]["n_params"], prov["train"]["tokens_per_trial"]
    fp = params / GPT2_SMALL_PARAMS if params else None
    ft = tokens / GPT2_SMALL_TOKENS if tokens else None
    comparable = fp is not None and fp >= COMPARABLE_FRACTION
    ours = (f"{params / 1e6:.2f}M parameters ({fp:.2%} of GPT-2 small's {GPT2_SMALL_PARAMS / 1e6:.0f}M)"
            if fp is not None else "a model whose parameter count was not recorded")
    seen = (f"{tokens:,.0f} training tokens per trial ({ft:.1e} of the ~{GPT2_SMALL_TOKENS:.0e} tokens "
            "GPT-2 small was pretrained on)" if ft is not None else "an unrecorded number of tokens")
    rule = (f"The paper's figures are shown beside ours only when our model has at least "
            f"{COMPARABLE_FRACTION:.0%} of GPT-2 small's parameters")
    verdict = ("; this one does, but the training budgets still differ, so read the comparison as one of shape"
               if comparable else "; this run is far smaller, so they are left out: at this scale our "
               "figures can neither confirm nor refute the paper's")
    return {"param_fraction": fp, "token_fraction": ft, "comparable": comparable,
            "statement": f"Scale: this sweep trained {ours} on {seen}. {rule}{verdict}."}
