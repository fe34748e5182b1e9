"""One localist trial: an Accelerate fine-tuning loop that writes tidy Parquet results.

Batches are drawn by step number from a seeded generator, so a resumed trial sees exactly the
batches an uninterrupted one would; together with Accelerate's saved optimizer, scheduler and
RNG state this makes a resumed trial end where an undisturbed one ends.

Under an existing torch.distributed process group (``accelerate launch``, or Ray Train's workers:
rank and world size come from the environment they set) the trial is data parallel: Accelerate
wraps the model in DDP, every worker trains on its rank's share of each step's global batch (the
same global batch whatever the number of workers), losses are averaged over the workers when they
are read, every worker evaluates the same held-out sequences, and only the main process writes
the trial's files, logs and reports progress.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from localist import compute, faults, flex, io, model_card, outputs, speed, trial_files
from localist.attention import LocalityContext
from localist.config import ConfigError, TrialConfig
from localist.data import Dataset, prepare
from localist.loss import linear_cross_entropy
from localist.model import MODEL_DIR, TRIAL_FILE, attn_dropout, build_model, n_layers
from localist.schedules import layer_lambdas

STATE_FILE = "trainer_state.json"


@dataclass
class TrialResult:
    status: str  # completed | diverged | errored
    eval_loss: float
    eval_ppl: float


class Preempted(Exception):
    """fit stopped after a step because its caller asked (`stop_requested`), a checkpoint of that
    step saved through on_checkpoint: args[0] is the step."""


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, because ru_maxrss can carry over a forking
    parent's peak (a trial started from a large process would report the parent's size)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _quiet(*_args, **_kwargs) -> None:
    """The log of a worker other than the main one: its lines would repeat the main worker's."""


def _optimizer(model, cfg: TrialConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases, norms or embeddings' bias terms).
    Fused (CUDA and CPU): one kernel, and its step counts stay on the device, where the foreach
    version reads each one back to the host (a sync per step)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95), fused=True)


class Trainer:
    def __init__(self, cfg: TrialConfig, out: str, trial_id: str = "trial", log: Callable[[str], None] = print,
                 extra: dict | None = None, data: Dataset | None = None, backend: str | None = None,
                 force_flex: bool | None = None):
        """``data`` replaces the corpus named by the config (benchmarks pass synthetic tokens);
        ``backend`` and ``force_flex`` override the compute plan's (``localist.compute.plan``)."""
        self.cfg, self.out, self.trial_id, self.log = cfg, out, trial_id, log
        self.extra = extra or {}
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        clock = time.perf_counter()
        self.timings: dict[str, float] = {}  # setup seconds by phase (trial.parquet; benchmarks/scale.py)

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            self.timings[name] = now - clock
            clock = now

        device_type = "cuda" if torch.cuda.is_available() else "cpu"  # where Accelerate will put the model
        # cpu=True on a CPU: Accelerate then joins a process group of several CPU workers (gloo).
        # split_batches: a step is one global batch whatever the number of workers, so the learning
        # rate schedule steps once per optimizer step (not once per worker, Accelerate's default).
        self.accel = Accelerator(mixed_precision=compute.precision(t.precision, device_type),
                                 gradient_accumulation_steps=t.grad_accum, cpu=device_type == "cpu",
                                 dataloader_config=DataLoaderConfiguration(split_batches=True))
        self.device = self.accel.device
        self.rank, self.world = self.accel.process_index, self.accel.num_processes
        if self.world != t.workers:
            raise ConfigError(f"train.workers is {t.workers} but {self.world} process(es) run this trial: start "
                              f"{t.workers} (torchrun --nproc_per_node {t.workers} -m orchestrator.cli train ..., or "
                              f"accelerate launch --multi_gpu --num_processes {t.workers} on GPUs), or set "
                              f"train.workers to {self.world}")
        self.is_main = self.accel.is_main_process
        if not self.is_main:
            self.log = log = _quiet
        set_seed(cfg.seed, device_specific=True)  # seed + rank: dropout differs between workers
        tokenizer = "tiny" if cfg.model.name == "tiny" else cfg.model.name
        lap("setup_accelerator_s")
        self.data: Dataset = data if data is not None else prepare(cfg.data, tokenizer, log=log)
        lap("setup_data_s")
        model = build_model(cfg.model, self.data.vocab_size, cfg.data.seq_len, cfg.seed)
        self.n_layer = n_layers(model)
        self.lambdas = layer_lambdas(cfg.locality, self.n_layer)
        self.window = cfg.locality.window if cfg.locality.partition == "window" else None
        lap("setup_model_s")
        self.train_blocks = torch.from_numpy(self.data.blocks("train", cfg.locality))
        self.eval_blocks = torch.from_numpy(self.data.blocks("eval", cfg.locality))
        lap("setup_blocks_s")
        optimizer = _optimizer(model, cfg)
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.steps, min_lr_rate=0.1)
        self.model, self.optimizer, self.scheduler = self.accel.prepare(model, optimizer, scheduler)
        self.plan = compute.plan(cfg, self.device.type, self.lambdas, attn_dropout(model),
                                 backend=backend, force_flex=force_flex)
        self._setup_forward(model)
        lap("setup_prepare_s")
        self.step = 0
        self.tokens_seen = 0
        self.train_time = 0.0
        self.wall_before = 0.0  # wall time of earlier attempts of this trial (resume)
        self.loss_window = [0.0, 0]  # train-loss sum and step count since the last logged row
        self._wall0 = time.perf_counter()
        self.step_rows: list[dict] = []
        self.layer_rows: list[dict] = []
        self.attention_rows: list[dict] = []
        self.metrics: dict = {}  # what the latest step logged or evaluated (see fit)
        self.eval_positions = dict.fromkeys(outputs.POSITION_GROUPS, math.nan)  # set by evaluate
        self.step0 = dict.fromkeys(outputs.STEP0_COLUMNS, math.nan)  # the evaluation before any update (evaluate_start)
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not yet read
        self._ahead = None  # the next micro-batch, already on its way to the device
        self._warm: tuple[int, float, int] | None = None  # tokens, train time, dynamo frames after step 1
        self.origin: dict = {}  # where the trial runs, for the model card: a sweep sets sweep and sweep_uri

    def _setup_forward(self, model) -> None:
        """The training forward + loss, compiled as the plan says (``localist.compute``).

        ``self.model`` stays the uncompiled module (evaluation with statistics runs eagerly; the
        parameters are shared). For GPT-2 in one process the loss comes from the hidden states
        through the tied head chunk by chunk (``localist.loss``); other models use their logits.
        """
        self.compiled = self.plan.compiled
        head = model.get_output_embeddings()
        simple = (getattr(model.config, "model_type", "") == "gpt2" and isinstance(head, torch.nn.Linear)
                  and head.bias is None and self.accel.distributed_type == DistributedType.NO)
        self._base, self._head = (model.base_model, head) if simple else (None, None)
        self._forward = compute.compile_step(self._forward_loss, self.plan)
        self._penalty_weight = float(self.cfg.locality.penalty_weight)  # a plain float: the compiled loss reads it
        self.flops_per_token = speed.flops_per_token(model, self.cfg.data.seq_len)
        T = self.cfg.data.seq_len
        self._causal = torch.ones(1, 1, T, T, dtype=torch.bool, device=self.device).tril()
        self.compile_s: float | None = None  # the first forward + backward, when compiled or on FlexAttention
        self._ready = False  # the first pass has run (or was not needed)
        self.stopping = False  # the checkpoint being saved is a stop's (fit's stop_requested): it raises Preempted next
        self._dynamo0 = speed.dynamo_counts()  # this trial's graphs, breaks and frames start here

    # -- data ---------------------------------------------------------------------------------

    def _context(self, blocks: torch.Tensor | None, **kw) -> LocalityContext:
        return LocalityContext(lambdas=self.lambdas, block=None if self.window else blocks.to(self.device),
                               window=self.window, mechanism=self.cfg.locality.mechanism, **kw)

    def _train_context(self, blocks: torch.Tensor) -> LocalityContext:
        """A training batch's context: every layer's path as planned (nothing decided in the step)."""
        return self._context(blocks, paths=self.plan.paths,
                             flex_backend=self.plan.backend if self.plan.device_type == "cuda" else None)

    def _load(self, step: int, micro: int):
        """The batch of a given step, the same on every run and after every resume: always exactly
        ``batch_size`` sequences (one shape for the whole trial, so compiled code never recompiles).
        The step's global batch (``batch_size`` x workers sequences) is drawn whatever the number of
        workers, and each worker takes its rank's slice: N workers of batch B train on what one
        worker of batch N x B does."""
        rng = np.random.default_rng([self.cfg.seed, step, micro])
        bs = self.cfg.train.batch_size
        idx = np.sort(rng.integers(0, len(self.data.train), bs * self.world))[self.rank * bs:(self.rank + 1) * bs]
        seqs = torch.from_numpy(np.asarray(self.data.train[idx], dtype=np.int64))
        parts = (seqs[:, :-1], seqs[:, 1:], self.train_blocks[idx])
        if self.device.type != "cuda":
            return parts
        return tuple(p.pin_memory().to(self.device, non_blocking=True) for p in parts)

    def _batch(self, step: int, micro: int):
        """The batch of (step, micro); on CUDA the next one is loaded to pinned memory and its copy
        queued right away, so the device never waits for the host to index and copy a batch."""
        t = self.cfg.train
        ahead, self._ahead = self._ahead, None
        batch = ahead[1] if ahead is not None and ahead[0] == (step, micro) else self._load(step, micro)
        nxt = (step, micro + 1) if micro + 1 < t.grad_accum else (step + 1, 0)
        if self.device.type == "cuda" and nxt[0] < t.steps:
            self._ahead = (nxt, self._load(*nxt))
        return batch

    # -- loss and evaluation ---------------------------------------------------------------------

    def _loss(self, x, y, ctx: LocalityContext) -> torch.Tensor:
        """The training loss of one micro-batch (compiled when the trial compiles)."""
        if self.plan.uses_flex and not self.compiled:  # an eager step: block masks built before the model
            # runs (x.device: 'cuda:0', the key the layers look them up by, where self.device may say 'cuda')
            flex.prepare(ctx, x.shape[1], x.device, backend="auto" if self.plan.device_type == "cuda" else None)
        with self.accel.autocast():
            return self._forward(x, y, ctx)

    def _forward_loss(self, x, y, ctx: LocalityContext) -> torch.Tensor:
        # use_cache=False: training needs no KV cache, and building one every step breaks the graph.
        # The prepared causal mask spares transformers its packed-sequence check (a host sync per
        # forward when eager); the localist layers use their context, not this mask.
        kw = {"locality": ctx, "use_cache": False, "attention_mask": self._causal}
        if self._base is not None:
            hidden = self._base(input_ids=x, **kw).last_hidden_state
            loss = linear_cross_entropy(hidden.flatten(0, 1), self._head.weight, y.reshape(-1))
        else:
            logits = self.model(input_ids=x, **kw).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        if ctx.penalty_terms:
            loss = loss + self._penalty_weight * torch.stack(ctx.penalty_terms).sum()
        return loss

    def block_positions(self, blocks: torch.Tensor) -> torch.Tensor:
        """(B, T) 0-based position of each query token in its block.

        Semantic and sentence blocks are runs of equal ids: the distance to the run's first
        token. The window partitioner has no blocks; a query there sees min(i, w-1) earlier keys
        in its band, and that count is its position (so both read "keys before me in my block").
        """
        T = blocks.shape[-1]
        idx = torch.arange(T).expand(blocks.shape[0], T)
        if self.window:
            return idx.clamp(max=self.window - 1)
        starts = torch.ones_like(blocks, dtype=torch.bool)
        starts[:, 1:] = blocks[:, 1:] != blocks[:, :-1]
        return idx - torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted held-out loss, also split by the query token's position in its block
        (``outputs.POSITION_GROUPS``: first token, positions 2-4, 5+; kept in ``eval_positions``);
        per-layer attention statistics reduced on the fly."""
        self.model.eval()
        net = self.accel.unwrap_model(self.model)  # not its DDP wrapper: every worker evaluates alone
        n = min(self.cfg.data.eval_sequences, len(self.data.eval))
        bs = self.cfg.train.batch_size
        nll, count = 0.0, 0
        edges = torch.tensor([lo for lo, _ in outputs.POSITION_GROUPS.values()][1:])
        group_nll, group_count = torch.zeros(len(edges) + 1, dtype=torch.float64), torch.zeros(len(edges) + 1)
        stats_ctx = None
        for start in range(0, n, bs):
            stop = min(start + bs, n)  # exactly the first n held-out sequences, whatever the batch size
            seqs = torch.from_numpy(np.asarray(self.data.eval[start:stop], dtype=np.int64))
            x, y = seqs[:, :-1].to(self.device), seqs[:, 1:].to(self.device)
            first = start == 0
            blocks = self.eval_blocks[start:stop]
            ctx = self._context(blocks, collect_stats=True,
                                sample_layers=(0, self.n_layer - 1) if first else ())
            if stats_ctx is not None:
                ctx.stats = stats_ctx.stats
            with self.accel.autocast():
                logits = net(input_ids=x, locality=ctx, use_cache=False).logits
            token_nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                        reduction="none").double().cpu()
            nll += float(token_nll.sum())
            count += y.numel()
            group = torch.bucketize(self.block_positions(blocks).reshape(-1), edges, right=True)
            group_nll.index_add_(0, group, token_nll)
            group_count.index_add_(0, group, torch.ones_like(group, dtype=group_count.dtype))
            if first:
                self._keep_sample(ctx, seqs[0])
            stats_ctx = ctx
        self.model.train()
        loss = nll / count
        self.eval_positions = {name: float(s / c) if c else math.nan
                               for name, s, c in zip(outputs.POSITION_GROUPS, group_nll, group_count)}
        for layer in range(self.n_layer):
            self.layer_rows.append({"step": self.step, "layer": layer, "lambda": self.lambdas[layer],
                                    **stats_ctx.stats[layer].means()})
        self._row("eval", loss)
        return loss

    def evaluate_start(self) -> None:
        """The evaluation at step 0, before any update: the starting model (a pretrained base) under
        this trial's locality, i.e. what the locality costs before fine-tuning recovers any of it.
        Its rows go to steps/layers at step 0 and its numbers to ``self.step0``; it reads no random
        state, so a trial evaluated at step 0 trains exactly as one that is not."""
        loss = self.evaluate()
        values = {"eval_loss": loss, "eval_ppl": self.step_rows[-1]["ppl"], **self.eval_positions}
        self.step0 = {outputs.STEP0_PREFIX + k: v for k, v in values.items()}
        self.log(f"[{self.trial_id}] step 0 (before training): eval loss {loss:.4f} ppl {values['eval_ppl']:.2f}")

    def _keep_sample(self, ctx: LocalityContext, seq: torch.Tensor) -> None:
        """Head-mean attention of the first eval passage at the first and last layer (latest eval)."""
        self.attention_rows = []
        for layer, att in sorted(ctx.samples.items()):
            S = att.shape[0]
            tokens = self.data.decode(seq[:S].tolist())
            q, k = np.tril_indices(S)
            self.attention_rows += [{"layer": layer, "query": int(a), "key": int(b), "weight": float(att[a, b]),
                                     "token": tokens[b]} for a, b in zip(q, k)]

    def _row(self, split: str, loss: float, step: int | None = None) -> None:
        self.step_rows.append({"step": self.step if step is None else step, "split": split, "loss": loss,
                               "ppl": math.exp(loss) if loss < 700 else math.inf,
                               "lr": float(self.scheduler.get_last_lr()[0]),
                               "tokens_seen": self.tokens_seen, "elapsed_s": self.train_time})

    # -- checkpoints --------------------------------------------------------------------------------

    def save_checkpoint(self, directory: str) -> None:
        """Accelerate's state (the main worker writes model, optimizer and scheduler, every worker its
        random state), then the main worker's STATE_FILE: the loop's counters and rows, and the size
        of every other file it sees (a copy of the folder cut short is told from a whole one:
        `checkpoint_step`). With several workers the directory may be one per worker (Ray Train
        merges what they report; the main one lists its own files) or one they share."""
        self.accel.save_state(directory)
        self.accel.wait_for_everyone()
        if not self.is_main:
            return
        files = {os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/"):
                 os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory) for name in names}
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_time": self.train_time,
                 "wall": self.wall_before + time.perf_counter() - self._wall0, "loss_window": self.loss_window,
                 "step_rows": self.step_rows, "layer_rows": self.layer_rows, "step0": self.step0, "files": files}
        with open(os.path.join(directory, STATE_FILE), "w") as f:
            json.dump(state, f)

    def load_checkpoint(self, directory: str) -> None:
        self.accel.load_state(directory)
        with open(os.path.join(directory, STATE_FILE)) as f:
            state = json.load(f)
        self.step, self.tokens_seen, self.train_time = state["step"], state["tokens_seen"], state["train_time"]
        self.wall_before, self.loss_window = state["wall"], state["loss_window"]
        self.step_rows, self.layer_rows = state["step_rows"], state["layer_rows"]
        self.step0 = state.get("step0", self.step0)  # a checkpoint from before step 0 was evaluated has none
        self.log(f"[{self.trial_id}] resumed from step {self.step}")

    def save_model(self, uri: str, summary: dict | None = None) -> None:
        """The trained model and its tokenizer as a Hugging Face folder (``localist.model.load_localist``),
        with the trial config and lambdas in localist_trial.json and a model card (README.md, with the
        ``summary`` numbers); written locally, then copied to uri."""
        from transformers import PreTrainedTokenizerFast

        model = self.accel.unwrap_model(self.model)
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d, safe_serialization=True)
            tok = PreTrainedTokenizerFast(tokenizer_file=self.data.tokenizer_path)
            tok.save_pretrained(d)
            record = {"trial_id": self.trial_id, "step": self.step, "lambdas": self.lambdas,
                      "config": self.cfg.model_dump(mode="json")}
            with open(os.path.join(d, TRIAL_FILE), "w") as f:
                json.dump(record, f, indent=1)
            model_card.write(d, record, summary or {}, self.layer_rows[-self.n_layer:], self.origin)
            io.upload_dir(d, uri)

    # -- the loop -------------------------------------------------------------------------------------

    def _first_pass(self) -> None:
        """One forward + backward of the first batch before the first step, gradients discarded and
        random state restored: it compiles the step (timed as compile_s), and if FlexAttention fails to
        compile or run here the trial goes on with SDPA masks (the plan and trial.parquet say so), a
        decision no compiled code can take from inside its own trace."""
        x, y, blocks = self._load(self.step, 0)
        t0 = time.perf_counter()
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        for attempt in (1, 2):
            try:
                with torch.random.fork_rng(devices=cuda):
                    self._loss(x, y, self._train_context(blocks)).backward()
                break
            except Exception as e:  # noqa: BLE001 - a compiler or kernel failure, reported and survived
                self.optimizer.zero_grad(set_to_none=True)
                if attempt == 2 or not self.plan.uses_flex:
                    raise
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                self.log(f"[{self.trial_id}] FlexAttention failed ({reason}); this trial uses SDPA masks")
                self.plan = self.plan.without_flex(f"failed: {reason}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_s = time.perf_counter() - t0

    def train_step(self) -> torch.Tensor:
        """One optimizer step (all its micro-batches) at self.step; returns its mean loss as a 0-d
        tensor on the device, unread: reading it every step would make the host wait for the GPU."""
        t = self.cfg.train
        if not self._ready:
            self._ready = True
            if self.compiled or self.plan.uses_flex:
                self._first_pass()
        fault = faults.check(self.step + 1, self.trial_id)
        step_loss = None
        for micro in range(t.grad_accum):
            x, y, blocks = self._batch(self.step, micro)
            with self.accel.accumulate(self.model):
                loss = self._loss(x, y, self._train_context(blocks))
                if fault == "nan":
                    loss = loss * float("nan")
                self.accel.backward(loss)
                if self.accel.sync_gradients and t.grad_clip > 0:
                    self.accel.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            part = loss.detach() / t.grad_accum
            step_loss = part if step_loss is None else step_loss + part
        return step_loss

    def _read_losses(self) -> tuple[int, float] | None:
        """Read the steps' losses queued since the last read (one wait for the device) into the
        train-loss window; the first non-finite one as (step, loss), else None."""
        if not self._pending:
            return None
        steps = [s for s, _ in self._pending]
        values = torch.stack([v.float() for _, v in self._pending])
        if self.world > 1:  # every worker reads at the same steps: the mean over workers is the step's loss
            values = self.accel.reduce(values, reduction="mean")
        values = values.tolist()
        self._pending = []
        for s, v in zip(steps, values):
            if not math.isfinite(v):
                return s, v
            self.loss_window = [self.loss_window[0] + v, self.loss_window[1] + 1]
        return None

    def fit(self, on_checkpoint: Callable[["Trainer"], None] | None = None,
            on_progress: Callable[[dict], None] | None = None,
            on_eval: Callable[["Trainer", float], None] | None = None,
            on_metrics: Callable[[dict], None] | None = None,
            stop_requested: Callable[[], bool] | None = None) -> TrialResult:
        """on_eval(trainer, eval_loss) after every evaluation but the last (the result carries that one).

        At each step that logs or evaluates, self.metrics holds that step's numbers (train_loss, lr,
        tokens_per_s, tokens_seen; eval_loss, eval_ppl, layer<l>/...): on_metrics receives them, except
        at a checkpoint step (on_checkpoint reads self.metrics, so one report carries both) and at the
        last step (the caller reads them with the result). steps/layers.parquet are rewritten at every
        evaluation and checkpoint before the last, so a running trial can be watched.

        stop_requested, asked after every step but the last: when it says so, that step's checkpoint
        goes through on_checkpoint (with the step's metrics, if any) and fit raises Preempted."""
        t = self.cfg.train
        self._wall0 = time.perf_counter()
        status = "completed"
        self.model.train()
        tokens_per_step = t.global_batch * self.cfg.data.seq_len  # over all workers
        if self.step == 0 and t.eval_at_start:
            self.evaluate_start()
        first = self.step + 1
        while self.step < t.steps:
            t0 = time.perf_counter()
            self._pending.append((self.step + 1, self.train_step()))
            self.step += 1
            self.tokens_seen += tokens_per_step
            last = self.step == t.steps
            log = self.step % t.log_every == 0 or last
            ev = self.step % t.eval_every == 0 or last
            ckpt = bool(on_checkpoint and t.checkpoint_every and self.step % t.checkpoint_every == 0 and not last)
            stop = bool(on_checkpoint and stop_requested and not last and stop_requested())
            # Losses are read (the host waits for the device) only here, inside the timed span.
            bad = self._read_losses() if (log or ev or ckpt or stop or self.step == first) else None
            self.train_time += time.perf_counter() - t0
            self.metrics = {}
            if self.step == first:
                self._warm = (self.tokens_seen, self.train_time, speed.dynamo_frames())
                self.timings["first_step_at"] = time.time()  # when the device first finished a step (epoch s)
            if bad is not None:
                status = "diverged"
                self._row("train", bad[1], step=bad[0])
                self.log(f"[{self.trial_id}] step {bad[0]}: loss is {bad[1]}; stopping at step {self.step} (diverged)")
                break
            if log:
                mean = self.loss_window[0] / self.loss_window[1]
                self._row("train", mean)
                self.metrics.update(self._progress(mean, on_progress))
                self.loss_window = [0.0, 0]
            if ev:
                loss = self.evaluate()
                self.metrics.update(self._eval_metrics(loss))
                if on_eval and not last and not (ckpt or stop):  # a checkpoint step reports once, with the eval
                    on_eval(self, loss)
            if last:
                break
            if ev or ckpt or stop:
                self.write_partial()
            if ckpt or stop:
                self.stopping = stop
                on_checkpoint(self)
            elif self.metrics and on_metrics:
                on_metrics(self.metrics)
            if stop:
                raise Preempted(self.step)
        eval_loss = math.nan
        if status == "completed":
            eval_loss = next(r["loss"] for r in reversed(self.step_rows) if r["split"] == "eval")
        return self._finish(status, eval_loss, self.wall_before + time.perf_counter() - self._wall0)

    def write_partial(self) -> None:
        """steps/layers.parquet so far, so a running trial can be watched (trial.parquet stays last)."""
        if self.is_main:
            outputs.write_rows(self.out, self.trial_id, self.step_rows, self.layer_rows)

    def _eval_metrics(self, loss: float) -> dict:
        m = {"eval_loss": loss, "eval_ppl": self.step_rows[-1]["ppl"]}
        for r in self.layer_rows[-self.n_layer:]:
            m[f"layer{r['layer']}/entropy_bits"] = r["entropy_bits"]
            m[f"layer{r['layer']}/in_block_mass"] = r["in_block_mass"]
        return m

    def _progress(self, loss: float, on_progress) -> dict:
        t = self.cfg.train
        rate = self.tokens_seen / self.train_time if self.train_time else 0.0
        per_step = self.train_time / max(self.step, 1)
        eta = per_step * (t.steps - self.step) * 1.1  # evaluations cost roughly a tenth more
        info = {"trial_id": self.trial_id, "step": self.step, "steps": t.steps, "loss": loss,
                "tokens_per_s": rate, "eta_s": eta, "time": time.time()}
        self.log(f"[{self.trial_id}] step {self.step}/{t.steps} loss {loss:.4f} "
                 f"lr {self.scheduler.get_last_lr()[0]:.2e} {rate:,.0f} tok/s eta {eta:.0f}s")
        if on_progress and self.is_main:
            on_progress(info)
        return {"train_loss": loss, "lr": float(self.scheduler.get_last_lr()[0]), "tokens_per_s": rate,
                "tokens_seen": self.tokens_seen}

    def speed_figures(self) -> dict:
        """How the step ran: compiled, compile_s (the first forward + backward), compiled_frames and
        graph_breaks (dynamo's, this trial: one frame and no break is one graph), recompiles (frames compiled after the first step of this run), mfu (model
        FLOPs utilisation after the first step, on a GPU of the peak table with bf16/fp16, else None),
        and each layer's attention path (``localist.attention.PATHS``) with why FlexAttention is on or off."""
        frames, rate = 0, 0.0
        if self._warm is not None:
            tokens, seconds, frames0 = self._warm
            frames = speed.dynamo_frames() - frames0
            rate = (self.tokens_seen - tokens) / (self.train_time - seconds) if self.train_time > seconds else 0.0
        peak = speed.peak_flops(self.device) if self.accel.mixed_precision in ("bf16", "fp16") else None
        counts = speed.dynamo_counts(since=self._dynamo0)
        return {"compiled": self.compiled, "compile_s": self.compile_s, "compiled_frames": counts["frames"],
                "graph_breaks": counts["graph_breaks"], "recompiles": frames,
                "mfu": speed.mfu(self.flops_per_token, rate, peak),
                "attention_paths": json.dumps(list(self.plan.paths)), "flex_note": self.plan.flex_note}

    def _device_name(self) -> str:
        """The device and, on a GPU, its model name (what the report's provenance shows)."""
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def _finish(self, status: str, eval_loss: float, wall: float) -> TrialResult:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else _peak_rss_mb()
        summary = {
            "status": status, "error": None, "eval_loss": eval_loss,  # a raising trial writes error.json instead
            "eval_ppl": math.exp(eval_loss) if math.isfinite(eval_loss) else math.nan,
            "final_step": self.step, "train_tokens": self.tokens_seen,
            "tokens_per_s": self.tokens_seen / self.train_time if self.train_time else 0.0,
            "wall_s": wall, "train_s": self.train_time, "peak_mem_mb": peak_mb,
            "n_layer_actual": self.n_layer, "lambdas": json.dumps([round(x, 6) for x in self.lambdas]),
            "device": self._device_name(), "hostname": socket.gethostname(),
            "n_params": sum(p.numel() for p in self.accel.unwrap_model(self.model).parameters()),
            "global_batch": self.cfg.train.global_batch,
            **{k: v if status == "completed" else math.nan
               for k, v in self.eval_positions.items()},
            **self.step0,
            **self.speed_figures(), **self.timings, **self.extra,
        }
        if not self.is_main:  # the main worker writes the trial's files
            return TrialResult(status, eval_loss, summary["eval_ppl"])
        if self.cfg.train.save_model and status == "completed":
            self.save_model(io.join(self.out, MODEL_DIR), summary)  # before trial.parquet, which marks the trial done
        outputs.write_trial(self.out, self.trial_id, self.cfg, summary, self.step_rows, self.layer_rows,
                            self.attention_rows)
        self.log(f"[{self.trial_id}] {status}: eval loss {eval_loss:.4f} ppl {summary['eval_ppl']:.2f} "
                 f"in {wall:.1f}s -> {self.out}")
        return TrialResult(status, eval_loss, summary["eval_ppl"])


def checkpoint_step(uri: str) -> int | None:
    """The step a checkpoint folder (on any filesystem) holds, or None unless it is whole: its
    STATE_FILE readable and every file that lists there at its size (a copy cut short, or a
    checkpoint written before STATE_FILE listed its files, gives None)."""
    import pyarrow.fs as pafs

    fs, path = io.resolve(uri)
    sizes = {os.path.relpath(i.path, path).replace(os.sep, "/"): i.size
             for i in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
             if i.type == pafs.FileType.File}
    if STATE_FILE not in sizes:
        return None
    try:
        state = json.loads(io.read_text(io.join(uri, STATE_FILE)))
        files, step = state["files"], int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):  # half-written, or an older checkpoint's state
        return None
    return step if all(sizes.get(name) == size for name, size in files.items()) else None


def run_trial(cfg: TrialConfig, out: str, trial_id: str = "trial", log=print) -> TrialResult:
    """Standalone trial (``localist train``): checkpoints under OUT/checkpoint, resumed if present."""
    trainer = Trainer(cfg, out, trial_id, log)
    ckpt_uri = io.join(out, trial_files.CHECKPOINT)
    local = io.is_local(out)
    if local and io.exists(io.join(ckpt_uri, STATE_FILE)):
        trainer.load_checkpoint(io.resolve(ckpt_uri)[1])

    def save(tr: Trainer) -> None:
        if not local:
            return
        final = io.resolve(ckpt_uri)[1]
        tmp, old = final + ".new", final + ".old"  # one folder all workers write into (`accelerate launch`)
        if tr.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed while writing it
        tr.accel.wait_for_everyone()
        tr.save_checkpoint(tmp)
        if tr.is_main:
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        tr.accel.wait_for_everyone()

    def progress(info: dict) -> None:
        trial_files.write_progress(out, info)

    io.makedirs(out)
    result = trainer.fit(on_checkpoint=save, on_progress=progress)
    trainer.accel.wait_for_everyone()
    if local and trainer.is_main:
        shutil.rmtree(io.resolve(ckpt_uri)[1], ignore_errors=True)
    return result
