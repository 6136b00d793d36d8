"""``EvalConfig``: every knob of ``plotpref eval``, with defaults, a ``quick`` preset, YAML loading.

Precedence (lowest first): the dataclass defaults, or :meth:`EvalConfig.quick` with ``--quick``;
then a YAML file (``--config``, keys = field names); then command-line flags (``--n-gsm8k 32``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from plotpref.errors import PlotprefError

METRICS = ("harmlessness", "over_refusal", "preference", "reward", "gsm8k", "perplexity")


@dataclass
class EvalConfig:
    """Settings of an evaluation run. Subset sizes of ``None`` mean "all available"."""

    # --- general ---
    metrics: list[str] = field(default_factory=lambda: ["harmlessness", "over_refusal", "preference", "gsm8k", "perplexity"])
    """Which metrics to run; "reward" is added automatically when ``reward_model`` is set."""
    seed: int = 0
    """Seeds torch and the behaviour sampling; the same seed gives the same report."""
    batch_size: int = 16
    """Rows per forward pass / generate call."""
    max_batch_tokens: int = 1024
    """Generation batches are also cut so that rows x longest prompt stays under this (long
    HarmBench contexts then do not pad a whole batch)."""
    max_new_tokens: int = 64
    """Greedy generation length for attacked behaviours and benign prompts."""
    dtype: str = "float32"
    device: str | None = None
    """None = CUDA when available, else CPU."""

    # --- harmlessness ---
    behavior_sources: list[str] = field(default_factory=lambda: ["advbench", "harmbench"])
    harmbench_split: str = "test"
    """"test" (320 behaviours), "val" (80) or "all" (400)."""
    harmbench_categories: list[str] = field(default_factory=lambda: ["standard", "contextual", "copyright"])
    n_behaviors: int | None = 50
    """Behaviours drawn (seeded) per source."""
    attacks: list[str] = field(default_factory=lambda: ["direct", "prefix_injection", "prefill", "gcg"])
    attack_file: str | None = None
    """JSONL/CSV of attacker-written prompts (columns behavior_id, prompt); adds the "file" attack."""
    n_file_cases: int | None = None
    """Rows used from ``attack_file`` (first N)."""
    gcg_behaviors: int = 4
    """GCG is slow on CPU: it attacks only the first N sampled behaviours."""
    gcg_steps: int = 20
    gcg_search_width: int = 128
    gcg_topk: int = 64
    gcg_optim_str_init: str = "x x x x x x x x x x x x x x x x x x x x"
    judge: str = "keyword"
    """"keyword" (AdvBench refusal strings) or "harmbench" (a classifier at ``judge_model``)."""
    judge_model: str | None = None
    refusal_strings: str = "llm_attacks_evaluate"
    """Bundled list under assets/refusal_prefixes/ (name without .json) or a path to a JSON list."""
    judge_agreement_n: int | None = None
    """Records of HarmBench's labelled validation set used for the judge's agreement figure."""

    # --- over-refusal ---
    n_benign: int | None = 100
    """Benign helpful-base prompts (first Human turn, evaluation lines 1-500)."""

    # --- preference / reward / perplexity ---
    pref_datasets: list[str] = field(default_factory=lambda: ["hh-harmless-eval", "hh-helpful-eval"])
    n_pref_pairs: int | None = 500
    reference_model: str | None = "auto"
    """Reference for implicit rewards: "auto" (the model labelled "base" when evaluated, else the
    base of a PEFT adapter), a path or name, or None (sum log-prob comparison)."""
    reward_model: str | None = None
    """An AutoModelForSequenceClassification path; scores the generations on benign prompts."""
    ppl_dataset: str = "hh-helpful-eval"
    n_ppl_pairs: int | None = 500
    max_length: int = 512
    max_prompt_length: int = 256

    # --- reasoning ---
    n_gsm8k: int | None = 200
    gsm8k_max_new_tokens: int = 256

    @classmethod
    def quick(cls, **overrides) -> EvalConfig:
        """Small subsets for a smoke run of every metric (about 2 minutes per 135M model on 2 CPU cores).

        16 behaviours per attack (8 AdvBench + 8 HarmBench), 48 new tokens; GCG on 1 behaviour,
        5 steps, search width 64; 32 benign prompts; 64 preference pairs per dataset;
        16 GSM8K questions with 128 new tokens; 64 perplexity pairs.
        """
        values = dict(n_behaviors=8, max_new_tokens=48, gcg_behaviors=1, gcg_steps=5, gcg_search_width=64,
                      n_benign=32, n_pref_pairs=64, n_gsm8k=16, gsm8k_max_new_tokens=128, n_ppl_pairs=64)
        values.update(overrides)
        return cls(**values).validated()

    @classmethod
    def from_yaml(cls, path: str | Path, base: EvalConfig | None = None) -> EvalConfig:
        """Read a YAML mapping of field names to values, on top of ``base`` (default: the defaults)."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise PlotprefError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise PlotprefError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise PlotprefError(f"{path}: expected a mapping of EvalConfig fields, got {type(data).__name__}")
        return (base or cls()).replace(_source=str(path), **data)

    def replace(self, _source: str = "override", **changes) -> EvalConfig:
        """A copy with ``changes`` applied, checked field by field."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise PlotprefError(f"{_source}: unknown EvalConfig field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(names))}")
        hints = typing.get_type_hints(type(self))
        for name, value in changes.items():
            _check_type(name, value, hints[name], _source)
        return dataclasses.replace(self, **changes).validated()

    def validated(self) -> EvalConfig:
        """Check names and ranges; returns self. Attack and judge names are checked by their registries."""
        bad = sorted(set(self.metrics) - set(METRICS))
        if bad:
            raise PlotprefError(f"unknown metric(s) {', '.join(bad)}; known metrics: {', '.join(METRICS)}")
        bad = sorted(set(self.behavior_sources) - {"advbench", "harmbench"})
        if bad:
            raise PlotprefError(f"unknown behavior source(s) {', '.join(bad)}; use advbench and/or harmbench")
        if self.harmbench_split not in ("test", "val", "all"):
            raise PlotprefError(f"harmbench_split must be test, val or all, not {self.harmbench_split!r}")
        bad = sorted(set(self.harmbench_categories) - {"standard", "contextual", "copyright"})
        if bad:
            raise PlotprefError(f"unknown HarmBench categories {', '.join(bad)}; known: standard, contextual, copyright")
        for name in ("batch_size", "max_batch_tokens", "max_new_tokens", "gsm8k_max_new_tokens", "max_length", "max_prompt_length", "gcg_steps", "gcg_search_width", "gcg_topk"):
            if getattr(self, name) < 1:
                raise PlotprefError(f"{name} must be at least 1, not {getattr(self, name)}")
        for f in dataclasses.fields(self):
            if f.name.startswith("n_") or f.name == "judge_agreement_n":
                value = getattr(self, f.name)
                if value is not None and value < 0:
                    raise PlotprefError(f"{f.name} must be >= 0 or null (all), not {value}")
        if self.attack_file and "file" not in self.attacks:
            self.attacks = [*self.attacks, "file"]
        if "file" in self.attacks and not self.attack_file:
            raise PlotprefError('the "file" attack needs attack_file: a JSONL/CSV of attacker prompts (behavior_id, prompt)')
        if self.judge == "harmbench" and not self.judge_model:
            raise PlotprefError('judge "harmbench" needs judge_model: the path of a HarmBench-style classifier (e.g. cais/HarmBench-Llama-2-13b-cls)')
        if self.reward_model and "reward" not in self.metrics:
            self.metrics = [*self.metrics, "reward"]
        if "reward" in self.metrics and not self.reward_model:
            raise PlotprefError('the "reward" metric needs reward_model: an AutoModelForSequenceClassification path')
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(name: str, value, hint, source: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return
        raise PlotprefError(f"{source}: {name} cannot be null")
    if type(None) in args:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PlotprefError(f"{source}: {name} must be a list of strings, got {value!r}")
        return
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool), float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}[hint](value)
    if not ok:
        raise PlotprefError(f"{source}: {name} must be {hint.__name__}, got {value!r}")
