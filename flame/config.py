"""The job configuration: one dataclass per section, read from TOML and overridden by `--section.key value`.

torchtitan 0.3.0 dropped TOML job files (its ConfigManager is built on tyro and Python config modules), so this
layer is ours. Where the peer trainer (flame) has a key we keep its name, so existing command lines still work;
the peer's data keys live in `training` there and in `data` here, and are accepted under both names (ALIASES).

    config = load_config(["--job.config_file", "configs/debug.toml", "--training.steps", "20"])

Errors are `ConfigError` (a ValueError) that name the key, what was wrong, and the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file or command line that cannot be used as given."""


def opt(default: Any, help: str) -> Any:
    """A config field with a default and the help text `--help` prints."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Job:
    config_file: Optional[str] = opt(None, "TOML job file; command-line overrides are applied on top of it")
    dump_folder: str = opt("exp/debug", "output folder: checkpoints, metrics.jsonl, TensorBoard, W&B, traces")
    description: str = opt("", "free text, printed and saved with the config")
    print_config: bool = opt(False, "print the whole resolved config at start (rank 0); the start banner says the "
                                    "essentials either way")
    inject_nan_steps: list[int] = opt([], "testing aid: make the loss NaN at these steps (the step is skipped)")
    crash_at_step: int = opt(-1, "testing aid: SIGKILL rank 0 right after this step (after its checkpoint)")
    crash_in_checkpoint: bool = opt(False, "testing aid: with crash_at_step, die in the middle of that step's "
                                           "checkpoint write (shards written, not yet committed)")


@dataclass
class Model:
    config: str = opt("configs/models/transformer_debug.json", "model JSON (any fla.models family, hybrids too)")
    tokenizer_path: Optional[str] = opt(None, "tokenizer directory or hub name; unset = the embedded default "
                                              "tokenizer (vocab 4096)")


@dataclass
class Data:
    dataset: str = opt("default", "comma-separated dataset paths or hub names; 'default' = the embedded corpus")
    dataset_name: Optional[str] = opt(None, "comma-separated subset (config) names, one per dataset")
    dataset_split: str = opt("train", "comma-separated split names, one per dataset (or one for all)")
    data_files: Optional[str] = opt(None, "comma-separated data_files globs, one per dataset")
    data_probs: Optional[str] = opt(None, "comma-separated sampling weights, one per dataset (default equal)")
    text_column: str = opt("text", "column holding the raw text")
    streaming: bool = opt(False, "stream the datasets instead of loading them")
    num_workers: int = opt(0, "data loader worker processes per rank")
    prefetch_factor: Optional[int] = opt(None, "batches prefetched per worker (needs num_workers > 0)")


@dataclass
class Training:
    steps: int = opt(100, "optimizer steps to train for")
    batch_size: int = opt(8, "sequences per microbatch per rank")
    seq_len: int = opt(2048, "tokens per sequence (row) of a microbatch")
    context_len: Optional[int] = opt(None, "longest document piece a sample may hold (varlen); unset = seq_len")
    varlen: bool = opt(True, "pack documents and pass cu_seqlens so no information crosses a document boundary")
    gradient_accumulation_steps: int = opt(1, "microbatches per optimizer step")
    max_norm: float = opt(1.0, "gradient clipping norm (0 = no clipping; the norm is still measured)")
    seed: int = opt(42, "seed for every RNG (Python, NumPy, torch, data order, weights)")
    compile: bool = opt(False, "torch.compile each block (options in [compile])")
    mixed_precision_param: Literal["bfloat16", "float32"] = opt("bfloat16", "FSDP compute dtype of parameters on "
                                                                           "GPU (CPU always float32)")
    mixed_precision_reduce: Literal["float32", "bfloat16"] = opt("float32", "FSDP gradient reduce dtype on GPU")
    gc_freq: int = opt(50, "run Python's garbage collector every N steps (it is disabled in between)")
    deterministic: bool = opt(False, "use deterministic algorithms (slower on GPU)")
    max_consecutive_skipped_steps: int = opt(10, "stop the run (exit code 3) after this many steps in a row with a "
                                                 "non-finite gradient norm, leaving the checkpoints as they are "
                                                 "(0 = never stop)")


@dataclass
class Optimizer:
    name: Literal["AdamW", "Adam"] = opt("AdamW", "optimizer")
    lr: float = opt(3e-4, "peak learning rate")
    beta1: float = opt(0.9, "Adam beta1")
    beta2: float = opt(0.95, "Adam beta2")
    eps: float = opt(1e-8, "Adam epsilon")
    weight_decay: float = opt(0.1, "decoupled weight decay")
    weight_decay_exclude: list[Literal["marked", "1d", "embedding"]] = opt(
        ["marked", "1d"], "kinds of parameters with no weight decay: 'marked' (a layer's _no_weight_decay: Mamba-2 "
                          "A_log, dt_bias, D; A_log, dt_bias of Gated DeltaNet, KDA, Gated DeltaProduct), '1d' (norm "
                          "weights, biases, per-channel gains), 'embedding' (the token embedding); empty = decay "
                          "every parameter (flame's behaviour before this option)")
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = opt("auto", "auto = fused on GPU, foreach "
                                                                                  "on CPU")


@dataclass
class LRScheduler:
    warmup_steps: int = opt(100, "linear warmup steps")
    schedule: Literal["constant", "cosine", "linear", "wsd"] = opt("cosine", "after warmup: constant, cosine or "
                                                                            "linear decay to min_lr_factor, or "
                                                                            "warmup-stable-decay (wsd)")
    decay_ratio: float = opt(0.1, "wsd only: fraction of the steps spent decaying at the end")
    decay_type: Literal["linear", "sqrt", "cosine"] = opt("linear", "wsd only: shape of the final decay")
    min_lr_factor: float = opt(0.0, "the schedule ends at lr * min_lr_factor")
    resume_schedule: Literal["continue", "recompute"] = opt("continue", "a resume that changes training.steps or a "
                                                                        "schedule setting: 'continue' goes on from "
                                                                        "the LR reached (no jump) to the new end; "
                                                                        "'recompute' follows the new settings as if "
                                                                        "they had held from step 0")


@dataclass
class Checkpoint:
    enable: bool = opt(True, "save and resume distributed checkpoints")
    folder: str = opt("checkpoint", "checkpoint folder, inside job.dump_folder")
    interval: int = opt(500, "save every N steps (and always at the end)")
    keep_latest_k: int = opt(2, "keep the k newest checkpoints (0 = keep all)")
    load_step: int = opt(-1, "resume from this step; -1 = the latest complete checkpoint (or start fresh)")
    create_seed_checkpoint: bool = opt(False, "write the initial weights as step-0 in one process and exit")


@dataclass
class Metrics:
    log_freq: int = opt(10, "log every N steps (console, metrics.jsonl, TensorBoard, W&B)")
    enable_tensorboard: bool = opt(False, "write TensorBoard events under <dump_folder>/tb")
    enable_wandb: bool = opt(False, "log to Weights & Biases (offline mode when there is no network)")
    wandb_project: str = opt("flame", "W&B project")
    peak_tflops: Optional[float] = opt(None, "device peak bf16 TFLOP/s for MFU; unset = looked up for known GPUs")


@dataclass
class Validation:
    enable: bool = opt(False, "measure validation loss and bits per byte")
    dataset: Optional[str] = opt(None, "held-out dataset path(s) or hub name(s); unset = data.dataset's own "
                                       "sources (with data.dataset_name / data_files / data_probs)")
    dataset_name: Optional[str] = opt(None, "subset (config) name; with dataset unset, data.dataset_name")
    dataset_split: str = opt("validation", "held-out split")
    data_files: Optional[str] = opt(None, "data_files glob; with dataset unset, data.data_files")
    freq: int = opt(100, "validate every N steps (and at the end)")
    steps: int = opt(10, "validation batches per evaluation")
    batch_size: Optional[int] = opt(None, "validation batch size; unset = training.batch_size")


@dataclass
class Parallelism:
    data_parallel_shard_degree: int = opt(-1, "FSDP data-parallel shards; -1 = all ranks divided by "
                                              "data_parallel_replicate_degree and context_parallel_degree")
    data_parallel_replicate_degree: int = opt(1, "HSDP: replicas of the sharded model (ranks = replicate x shard; "
                                                 "gradients averaged over all); 1 = plain FSDP")
    context_parallel_degree: int = opt(1, "CP: ranks each packed sample is split across (ranks = data parallel x "
                                          "CP; training.seq_len must be divisible by it); 1 = off")
    fsdp_reshard_after_forward: Literal["default", "always", "never"] = opt("default", "free gathered weights "
                                                                                       "after forward (default: "
                                                                                       "all but the root)")


@dataclass
class ActivationCheckpoint:
    mode: Literal["none", "full", "selective"] = opt("none", "recompute activations in backward")
    selective_ac_option: str = opt("op", "selective: 'op' (keep matmul outputs, recompute the rest) or an "
                                         "integer N (checkpoint every Nth block)")


@dataclass
class Compile:
    backend: str = opt("inductor", "torch.compile backend")
    fullgraph: bool = opt(False, "require one graph per block")
    dynamic: Optional[bool] = opt(None, "dynamic shapes; unset = automatic (varlen batches change cu_seqlens' "
                                        "length, which then compiles once more with dynamic shapes)")


@dataclass
class Profiling:
    enable_profiling: bool = opt(False, "torch profiler traces under <dump_folder>/<save_traces_folder>")
    save_traces_folder: str = opt("profile_traces", "trace folder inside job.dump_folder")
    profile_freq: int = opt(10, "profile one step every N steps")
    profiler_warmup: int = opt(3, "profiler warmup steps per cycle")
    profiler_active: int = opt(1, "profiled steps per cycle")
    enable_memory_snapshot: bool = opt(False, "CUDA memory snapshots")


@dataclass
class JobConfig:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    training: Training = field(default_factory=Training)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    metrics: Metrics = field(default_factory=Metrics)
    validation: Validation = field(default_factory=Validation)
    parallelism: Parallelism = field(default_factory=Parallelism)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)
    compile: Compile = field(default_factory=Compile)
    profiling: Profiling = field(default_factory=Profiling)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


# The peer trainer keeps its data keys (and the shard degree) in [training]; they mean the same thing here.
ALIASES = {f"training.{k}": f"data.{k}" for k in (
    "dataset", "dataset_name", "dataset_split", "data_files", "data_probs", "streaming", "num_workers",
    "prefetch_factor")}
ALIASES["training.data_parallel_shard_degree"] = "parallelism.data_parallel_shard_degree"
ALIASES["lr_scheduler.lr_min"] = "lr_scheduler.min_lr_factor"  # the peer's lr_min is a ratio of optimizer.lr


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(JobConfig)}


def _field_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def all_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in _sections().items() for k in _field_types(cls)]


def _closest(key: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _describe(args[0]) + " (or none)"
    if origin is list:
        return "a list of " + _describe(typing.get_args(tp)[0]) + " (comma-separated on the command line)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def convert(key: str, tp: Any, value: Any) -> Any:
    """Convert a TOML value or a command-line string to the field type `tp`; ConfigError names the key."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key} expects {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return convert(key, inner, value)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        text = str(value)
        hint = difflib.get_close_matches(text, [str(c) for c in choices], n=1, cutoff=0.0)
        raise ConfigError(f"{key} expects {_describe(tp)}, got {value!r}" + (f"; did you mean {hint[0]!r}?" if hint
                                                                               else ""))
    if origin is list:
        inner = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [convert(key, inner, v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            as_float = float(str(value).replace("_", ""))
        except ValueError:
            raise bad from None
        if not as_float.is_integer():
            raise bad
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    raise bad


def _resolve_key(key: str) -> tuple[str, str]:
    key = ALIASES.get(key, key)
    sections = _sections()
    section, _, name = key.partition(".")
    if section not in sections or not name:
        raise ConfigError(f"unknown config key '{key}'" + _closest(key, all_keys()))
    if name not in _field_types(sections[section]):
        raise ConfigError(f"unknown config key '{key}'" + _closest(key, all_keys()))
    return section, name


def _set(config: JobConfig, key: str, value: Any) -> None:
    section, name = _resolve_key(key)
    tp = _field_types(type(getattr(config, section)))[name]
    setattr(getattr(config, section), name, convert(f"{section}.{name}", tp, value))


def _parse_args(argv: list[str]) -> list[tuple[str, Any]]:
    """`--a.b v`, `--a.b=v`, a bare boolean flag `--a.b` (true), `--a.no_b` / `--no-a.b` (false)."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: options look like --section.key value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            pairs.append((key, value))
            i += 1
            continue
        negated = None
        if body.startswith("no-"):
            negated = body[3:]
        elif "." in body and body.split(".", 1)[1].startswith("no_"):
            section, name = body.split(".", 1)
            negated = f"{section}.{name[3:]}"
        if negated is not None and _is_bool(negated) and not _is_key(body):
            pairs.append((negated, False))
            i += 1
            continue
        takes_flag = _is_bool(body) and (i + 1 == len(argv) or argv[i + 1].startswith("--")
                                         or argv[i + 1].lower() not in _TRUE | _FALSE)
        if takes_flag:
            pairs.append((body, True))
            i += 1
            continue
        if i + 1 == len(argv):
            _resolve_key(body)  # an unknown key is the clearer error
            raise ConfigError(f"--{body} needs a value")
        pairs.append((body, argv[i + 1]))
        i += 2
    return pairs


def _is_key(key: str) -> bool:
    try:
        _resolve_key(key)
        return True
    except ConfigError:
        return False


def _is_bool(key: str) -> bool:
    if not _is_key(key):
        return False
    section, name = _resolve_key(key)
    return _field_types(_sections()[section])[name] is bool


def load_toml(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"job.config_file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"job.config_file {path!r} is not valid TOML: {e}") from None


def load_config(argv: list[str] | None = None) -> JobConfig:
    """Defaults, then the TOML file named by --job.config_file, then the other command-line overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print(help_text())
        raise SystemExit(0)
    pairs = _parse_args(argv)
    config = JobConfig()
    config_file = [v for k, v in pairs if k == "job.config_file"]
    if config_file:
        data = load_toml(config_file[-1])
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{config_file[-1]}: top-level key '{section}' must be a [section]"
                                  + _closest(section, list(_sections())))
            for name, value in values.items():
                try:
                    _set(config, f"{section}.{name}", value)
                except ConfigError as e:
                    raise ConfigError(f"{config_file[-1]}: {e}") from None
    for key, value in pairs:
        _set(config, key, value)
    validate(config)
    return config


def validate(config: JobConfig) -> None:
    """Cross-field and range checks that a type alone cannot express; each error names the key and the fix."""
    t, o, s = config.training, config.optimizer, config.lr_scheduler
    for key, value in [("training.steps", t.steps), ("training.batch_size", t.batch_size),
                       ("training.gradient_accumulation_steps", t.gradient_accumulation_steps),
                       ("training.gc_freq", t.gc_freq), ("checkpoint.interval", config.checkpoint.interval),
                       ("metrics.log_freq", config.metrics.log_freq), ("validation.freq", config.validation.freq),
                       ("validation.steps", config.validation.steps),
                       ("profiling.profile_freq", config.profiling.profile_freq)]:
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    # One token of a sequence predicts the next: a 1-token sequence (or document piece) has no target at all,
    # and its loss is a mean over nothing (NaN).
    if t.seq_len < 2:
        raise ConfigError(f"training.seq_len must be >= 2 (a sequence needs a next token to predict), got "
                          f"{t.seq_len}")
    if t.context_len is not None and t.context_len < 2:
        raise ConfigError(f"training.context_len must be >= 2 (a document piece needs a next token to predict) "
                          f"or unset, got {t.context_len}")
    if config.validation.batch_size is not None and config.validation.batch_size < 1:
        raise ConfigError(f"validation.batch_size must be >= 1 or unset, got {config.validation.batch_size}")
    if t.max_consecutive_skipped_steps < 0:
        raise ConfigError(f"training.max_consecutive_skipped_steps must be >= 0 (0 = never stop), got "
                          f"{t.max_consecutive_skipped_steps}")
    if not (math.isfinite(t.max_norm) and t.max_norm >= 0):
        raise ConfigError(f"training.max_norm must be a finite number >= 0 (0 = no clipping), got {t.max_norm}")
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError(f"optimizer.lr must be a finite number > 0, got {o.lr}")
    for key, value in (("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if not (math.isfinite(o.eps) and o.eps > 0):
        raise ConfigError(f"optimizer.eps must be a finite number > 0, got {o.eps}")
    if not (math.isfinite(o.weight_decay) and o.weight_decay >= 0):
        raise ConfigError(f"optimizer.weight_decay must be a finite number >= 0, got {o.weight_decay}")
    if config.checkpoint.keep_latest_k < 0:
        raise ConfigError(f"checkpoint.keep_latest_k must be >= 0 (0 = keep all), got "
                          f"{config.checkpoint.keep_latest_k}")
    if s.warmup_steps < 0:
        raise ConfigError(f"lr_scheduler.warmup_steps must be >= 0, got {s.warmup_steps}")
    if not 0.0 <= s.decay_ratio <= 1.0:
        raise ConfigError(f"lr_scheduler.decay_ratio must be in [0, 1], got {s.decay_ratio}")
    if not 0.0 <= s.min_lr_factor <= 1.0:  # negative: the LR would cross zero; above 1: the decay would grow it
        raise ConfigError(f"lr_scheduler.min_lr_factor must be in [0, 1] (the end LR as a fraction of "
                          f"optimizer.lr), got {s.min_lr_factor}")
    peak = config.metrics.peak_tflops
    if peak is not None and not (math.isfinite(peak) and peak > 0):
        raise ConfigError(f"metrics.peak_tflops must be a finite number > 0 or unset, got {peak}")
    option = config.activation_checkpoint.selective_ac_option
    if option != "op" and not (option.isdigit() and int(option) >= 1):
        raise ConfigError(f"activation_checkpoint.selective_ac_option must be 'op' or an integer >= 1, got "
                          f"{option!r}")
    if config.data.prefetch_factor is not None and config.data.num_workers == 0:
        raise ConfigError("data.prefetch_factor needs data.num_workers > 0")
    if config.data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {config.data.num_workers}")
    cp = config.parallelism.context_parallel_degree
    if cp < 1:
        raise ConfigError(f"parallelism.context_parallel_degree must be >= 1 (1 = off), got {cp}")
    if cp > 1 and t.seq_len % cp:
        raise ConfigError(f"parallelism.context_parallel_degree={cp} splits every sample into {cp} equal pieces: "
                          f"training.seq_len ({t.seq_len}) must be a multiple of it (e.g. "
                          f"{-(-t.seq_len // cp) * cp})")


def help_text() -> str:
    lines = ["usage: [torchrun --nproc_per_node=N] -m flame.train --job.config_file FILE [--section.key VALUE ...]",
             "",
             "Booleans: --section.key (true), --section.key false, --section.no_key. Lists: comma-separated.",
             "Peer-trainer aliases: " + ", ".join(f"{a} -> {b}" for a, b in ALIASES.items()), ""]
    defaults = JobConfig()
    for section, cls in _sections().items():
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = getattr(getattr(defaults, section), f.name)
            lines.append(f"  --{section}.{f.name} ({_describe(_field_types(cls)[f.name])}, default "
                         f"{default!r})")
            lines.append(f"      {f.metadata.get('help', '')}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: JobConfig) -> str:
    """The resolved config as a TOML job file (None values are left out: they are the defaults' 'unset')."""
    out = []
    for section, values in config.to_dict().items():
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        out.append("")
    return "\n".join(out)
