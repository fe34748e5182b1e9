"""Trial configuration: one validated tree whose dotted keys (``locality.peak``) are a stable contract.

Sweep files, ``--set`` overrides and the Parquet column names all use these dotted keys, so
renaming a field here is a breaking change for users' sweep files and for later analysis.
Reading YAML files and ``--set`` overrides into this tree, with file-and-key error messages,
is localist/config_files.py. The schema checks values only: whether a named corpus file exists
is checked where a config is loaded to run (config_files.check_files, spec.check_files).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from localist.errors import UserError

BUILTIN_CORPORA = ("kjv", "pydoc")  # data.corpus names that are no file (localist/data.py loads them)

# The small trial of the test suite and of the benchmarks' --quick runs: seconds on a laptop CPU.
# (`localist train` without a file uses the schema's defaults below: 4 x 128, seq 128, 200 steps.)
QUICK_TRIAL: dict[str, dict[str, Any]] = {
    "model": {"name": "tiny", "n_layer": 3, "n_embd": 64, "n_head": 2},
    "data": {"corpus": "kjv", "max_chars": 200_000, "seq_len": 64, "eval_sequences": 16, "vocab_size": 1024},
    "train": {"steps": 20, "batch_size": 4, "lr": 0.003, "warmup_steps": 4, "eval_every": 10, "log_every": 10},
    "locality": {"min_len": 4, "max_len": 16},
}


class ConfigError(UserError, ValueError):
    """A user error in a config file or override; the CLI prints it and exits with code 2."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("tiny", description="'tiny' (built from this section), a hub name or a local directory")
    n_layer: int = Field(4, ge=1, description="tiny only: transformer blocks")
    n_embd: int = Field(128, ge=8, description="tiny only: hidden size")
    n_head: int = Field(4, ge=1, description="tiny only: attention heads")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="tiny only: residual and embedding dropout")
    attn_dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "attention-probability dropout, every model (a hub model's own, GPT-2's 0.1, is replaced); "
        "above 0 the bias layers leave FlexAttention for SDPA masks on GPUs"))

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.name == "tiny" and self.n_embd % self.n_head:
            raise ValueError(f"n_embd: {self.n_embd} is not divisible by n_head ({self.n_head})")
        return self


class DataConfig(_Section):
    corpus: str = Field("kjv", description=f"{', '.join(map(repr, BUILTIN_CORPORA))}, a text file or folder, "
                                            "or 'hf:NAME[/CONFIG]'")
    max_chars: int | None = Field(1_500_000, ge=1000, description="use only the first N characters (None = all)")
    seq_len: int = Field(128, ge=8, description="tokens per training sequence")
    eval_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="tail of the text held out for evaluation")
    eval_sequences: int = Field(64, ge=1, description="held-out sequences scored at each evaluation")
    vocab_size: int = Field(4096, ge=300, description="tiny only: byte-level BPE vocabulary trained on the corpus")
    text_column: str = Field("text", description="hf datasets only: the column holding the text")
    cache_dir: str | None = Field(None, description="tokenised-corpus cache (default $LOCALIST_CACHE or ~/.cache/localist)")

    @property
    def is_path(self) -> bool:
        """True when corpus names a text file or folder (not a built-in corpus or 'hf:NAME')."""
        return self.corpus not in BUILTIN_CORPORA and not self.corpus.startswith("hf:")


class TrainConfig(_Section):
    steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    workers: int = Field(1, ge=1, description=(
        "data-parallel processes (DDP, one per GPU), each with its own batch_size x grad_accum: the global "
        "batch is batch_size x grad_accum x workers. A sweep starts them on Ray Train (resources.workers); "
        "alone: accelerate launch --num_processes N"))
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(20, ge=0, description="linear warm-up, then cosine decay to 10% of lr")
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm (0 = off)")
    eval_every: int = Field(50, ge=1, description="evaluate (with attention statistics) every N steps and at the end")
    eval_at_start: bool = Field(True, description=(
        "also evaluate before the first update (step 0): a pretrained base's zero-shot cost of the locality"))
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every N steps (0 = none; a sweep sets it)")
    log_every: int = Field(10, ge=1, description="print a progress line every N steps")
    precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="auto: bf16 on a capable GPU, else fp32")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = leave as is)")
    save_model: bool = Field(False, description="write the final model and tokenizer to OUT/model (Hugging Face folder)")
    compile: Literal["auto", "true", "false"] = Field(
        "auto", description="torch.compile the training forward and loss: auto = on for CUDA, off on CPU")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, v: Any) -> Any:
        """Old sweep files say true/false: keep accepting booleans (and yes/no/on/off from --set)."""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str) and v.strip().lower() in ("yes", "on", "1", "no", "off", "0"):
            return "true" if v.strip().lower() in ("yes", "on", "1") else "false"
        return v.strip().lower() if isinstance(v, str) else v

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step, over all workers."""
        return self.batch_size * self.grad_accum * self.workers

    def compiled_on(self, device_type: str) -> bool:
        """Whether the trainer compiles on this device ('cuda', 'cpu', ...)."""
        return self.compile == "true" or (self.compile == "auto" and device_type == "cuda")


class LocalityConfig(_Section):
    # Fields that cannot change training when every lambda is 0 (see TrialConfig.canonical);
    # every other field, including any added later, keeps trials apart.
    OFF_NORMALISED: ClassVar[tuple[str, ...]] = (
        "schedule", "peak", "power", "lambdas", "mechanism", "penalty_weight")

    peak: float = Field(1.0, ge=0.0, le=1.0, description="lambda_max, the locality of the deepest layer")
    schedule: Literal["uniform", "polynomial", "list"] = Field("polynomial", description="how lambda grows with depth")
    power: float = Field(5.0, ge=0.0, description="polynomial: lambda_l = peak * (l/(L-1))^power")
    lambdas: list[float] | None = Field(None, description="list: one lambda per layer, each in [0, 1]")
    partition: Literal["semantic", "sentence", "window"] = Field("semantic", description="what counts as in-block")
    window: int = Field(32, ge=1, description="window: key j is in-block for query i when i - j < window")
    min_len: int = Field(8, ge=1, description="semantic: shortest block in tokens")
    max_len: int = Field(64, ge=2, description="semantic: longest block in tokens")
    mechanism: Literal["bias", "penalty"] = Field("bias", description="logit bias, or a loss penalty on out-of-block mass")
    penalty_weight: float = Field(1.0, ge=0.0, description="penalty: weight of the out-of-block mass term")

    @model_validator(mode="after")
    def _consistent(self) -> "LocalityConfig":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len: {self.min_len} exceeds max_len ({self.max_len})")
        if self.schedule == "list":
            if not self.lambdas:
                raise ValueError("lambdas: schedule 'list' needs one lambda per layer")
            bad = [x for x in self.lambdas if not 0.0 <= x <= 1.0]
            if bad:
                raise ValueError(f"lambdas: every lambda must lie in [0, 1]; got {bad}")
        return self

    @property
    def is_off(self) -> bool:
        """True when every layer's lambda is 0, whatever the depth: plain GPT-2."""
        if self.schedule == "list":
            return all(x == 0 for x in self.lambdas or [])
        return self.peak == 0.0


class TrialConfig(_Section):
    seed: int = Field(0, ge=0)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    locality: LocalityConfig = LocalityConfig()

    def canonical(self) -> "TrialConfig":
        """The same trial with settings that cannot change the result normalised away.

        With every lambda at 0 the schedule and mechanism cannot change training, so such trials
        compare equal when they share the partitioner (which still decides the measured in-block
        mass); the sweep uses this to run the distributed baseline once per seed.
        """
        if not self.locality.is_off:
            return self
        off = {name: LocalityConfig.model_fields[name].default for name in LocalityConfig.OFF_NORMALISED}
        off.update(schedule="uniform", peak=0.0)
        return self.model_copy(update={"locality": self.locality.model_copy(update=off)})

    def flat(self) -> dict[str, Any]:
        return flatten(self.model_dump())


# ---------------------------------------------------------------------------------------------
# the schema's dotted keys, and warnings


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def valid_keys(model: type[BaseModel] = TrialConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += valid_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def warnings_for(cfg: "TrialConfig") -> list[str]:
    """Legal but probably unintended settings, worth a line on stderr before compute starts."""
    t = cfg.train
    out = []
    if t.warmup_steps >= t.steps:
        out.append(f"train.warmup_steps ({t.warmup_steps}) is not shorter than train.steps ({t.steps}): "
                   "the learning rate is still warming up when training ends")
    return out
