"""``run_evaluation``: evaluate several models with one configuration and write the comparison.

Outputs in ``out_dir``: ``report.json`` (everything, per model and metric, with n, timings, the
judge and its agreement with human labels, the config and versions), ``report.md`` (one row per
model), ``asr.png`` and ``metrics.png``, and ``generations/LABEL.jsonl`` (every prompt, output and
verdict, for reading what the numbers count).
"""

from __future__ import annotations

import gc
import json
import logging
import platform
import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import plotpref
from plotpref.errors import PlotprefError
from plotpref.evaluate import benchmarks
from plotpref.evaluate.attacks import build_attack
from plotpref.evaluate.behaviors import load_behaviors
from plotpref.evaluate.config import EvalConfig
from plotpref.evaluate.judges import KeywordJudge, build_judge, judge_agreement, load_refusal_strings

logger = logging.getLogger(__name__)

__all__ = ["run_evaluation", "write_markdown", "plot_charts", "strip_timings"]

TIMING_KEYS = frozenset({"seconds", "started", "finished"})

DATA_NOTES = [
    "HH-RLHF evaluation pairs are lines 1-500 of Anthropic's harmless-base / helpful-base *test* files "
    "(harmless-base train is not available here; lines 501-2312 of harmless-base test are used for training instead).",
    "Benign prompts for over-refusal: first Human turn of helpful-base test lines 1-500.",
    "HarmBench copyright behaviours are judged by the same judge as the rest (HarmBench's hashing classifier is not available).",
]


def strip_timings(report):
    """``report`` without wall-clock fields (``seconds``, ``started``, ``finished``): what must
    be identical between two runs with the same seed."""
    if isinstance(report, dict):
        return {k: strip_timings(v) for k, v in report.items() if k not in TIMING_KEYS}
    if isinstance(report, list):
        return [strip_timings(v) for v in report]
    return report


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _versions() -> dict:
    import transformers

    versions = {"plotpref": plotpref.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version()}
    try:
        import nanogcg  # noqa: F401
        from importlib.metadata import version

        versions["nanogcg"] = version("nanogcg")
    except Exception:  # not installed: only the gcg attack needs it
        pass
    return versions


def _safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label) or "model"


def _reference_for(label: str, path: str | None, models: dict[str, str | None], config: EvalConfig) -> tuple[str, str | None] | None:
    """Where the reference log-probs of ``label`` come from: ("label", name) for another evaluated
    model, ("path", path) for a model to load, or None for the sum log-prob comparison."""
    from plotpref.models import adapter_base, resolve_model

    choice = config.reference_model
    if choice is None or choice == "none":
        return None
    if choice == "auto":
        if "base" in models and label != "base":
            return ("label", "base")
        base = adapter_base(resolve_model(path)) if path is not None else None
        return ("path", base) if base else None
    if choice in models:
        return ("label", choice) if choice != label else None
    return ("path", choice)


class _Timer:
    def __init__(self, target: dict, key: str):
        self.target, self.key = target, key

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.target.setdefault(self.key, {})["seconds"] = round(time.perf_counter() - self.start, 3)


def run_evaluation(models: dict[str, str | None], config: EvalConfig | None = None, out_dir: str | Path = "eval_out", *,
                   device: str | None = None) -> dict:
    """Evaluate every model in ``models`` (label -> path or name; None = the default model) and
    write report.json, report.md and the PNG charts into ``out_dir``. Returns the report."""
    from plotpref.models import load_model, load_tokenizer, resolve_model

    config = (config or EvalConfig()).validated()
    if not models:
        raise PlotprefError("no model to evaluate: pass at least one model path (or 'base' for the default model)")
    device = device or config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out_dir)
    # Check every name and path before the first slow step.
    for label, path in models.items():
        if path is not None:
            resolve_model(path)
    attacks = [build_attack(name, config) for name in config.attacks] if "harmlessness" in config.metrics else []
    judge = build_judge(config, device) if "harmlessness" in config.metrics else None
    refusal_judge = KeywordJudge(load_refusal_strings(config.refusal_strings))
    if config.reward_model:
        resolve_model(config.reward_model)

    started = time.perf_counter()
    report: dict = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
                    "config": config.to_dict(), "seed": config.seed, "device": device, "data_notes": DATA_NOTES, "models": {}}
    _seed_everything(config.seed)

    # ---- things shared by every model ----
    behaviors, static_cases = [], {}
    if judge is not None:
        agreement = judge_agreement(judge, config.judge_agreement_n)
        report["judge"] = {**judge.describe(), "agreement_with_humans": agreement}
        behaviors = load_behaviors(config.behavior_sources, harmbench_split=config.harmbench_split,
                                   harmbench_categories=config.harmbench_categories, n_per_source=config.n_behaviors, seed=config.seed)
        static_cases = {a.name: a.test_cases(behaviors) for a in attacks if not a.needs_model}
        report["behaviors"] = {"n": len(behaviors), "ids": [b.id for b in behaviors]}
    datasets = _load_pair_datasets(config)
    benign = benchmarks.load_benign_prompts(config.n_benign) if {"over_refusal", "reward"} & set(config.metrics) else []
    gsm8k_items = benchmarks.load_gsm8k(config.n_gsm8k) if "gsm8k" in config.metrics else []
    reward = _load_reward_model(config.reward_model, device) if "reward" in config.metrics else None

    scores: dict[tuple[str, str], tuple[torch.Tensor, int]] = {}  # (model key, dataset) -> (K x 4, skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "generations").mkdir(exist_ok=True)
    for label, path in models.items():
        logger.info("evaluating %s (%s)", label, path or "default model")
        entry = report["models"][label] = {"path": str(resolve_model(path)), "metrics": {}}
        metrics, records = entry["metrics"], []
        model_start = time.perf_counter()
        model = load_model(path, dtype=config.dtype, device=device)
        tokenizer = load_tokenizer(path)
        _seed_everything(config.seed)
        if "harmlessness" in config.metrics:
            with _Timer(metrics, "harmlessness"):
                metrics["harmlessness"] = benchmarks.harmlessness(
                    model, tokenizer, attacks, static_cases, behaviors, judge, max_new_tokens=config.max_new_tokens,
                    batch_size=config.batch_size, records=records, max_batch_tokens=config.max_batch_tokens)
                metrics["harmlessness"]["judge"] = report["judge"]  # name, settings and agreement with human labels
        benign_outputs = None
        if benign:
            timing: dict = {}
            with _Timer(timing, "over_refusal"):
                result, benign_outputs = benchmarks.over_refusal(model, tokenizer, benign, refusal_judge, max_new_tokens=config.max_new_tokens,
                                                                 batch_size=config.batch_size, records=records,
                                                                 max_batch_tokens=config.max_batch_tokens)
            if "over_refusal" in config.metrics:
                metrics["over_refusal"] = {**result, **timing["over_refusal"]}
        if reward is not None:
            with _Timer(metrics, "reward"):
                values = benchmarks.reward_scores(*reward, benign, benign_outputs, batch_size=config.batch_size)
                metrics["reward"] = {"mean_score": sum(values) / len(values) if values else None, "n": len(values),
                                     "reward_model": config.reward_model, "responses": "greedy replies to the benign prompts"}
        for name, examples in datasets.items():
            with _Timer(entry, f"_scoring {name}"):
                scores[(f"label:{label}", name)] = benchmarks.preference_scores(
                    model, tokenizer, examples, batch_size=config.batch_size, max_length=config.max_length,
                    max_prompt_length=config.max_prompt_length, desc=f"scoring {name}")
        if "gsm8k" in config.metrics:
            with _Timer(metrics, "gsm8k"):
                metrics["gsm8k"] = benchmarks.gsm8k(model, tokenizer, gsm8k_items, max_new_tokens=config.gsm8k_max_new_tokens,
                                                    batch_size=config.batch_size, records=records,
                                                    max_batch_tokens=config.max_batch_tokens)
        del model
        gc.collect()
        entry["seconds"] = round(time.perf_counter() - model_start, 3)
        with open(out_dir / "generations" / f"{_safe_label(label)}.jsonl", "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    _preference_and_perplexity(report, models, config, datasets, scores, device)
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["seconds"] = round(time.perf_counter() - started, 3)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(write_markdown(report), encoding="utf-8")
    plot_charts(report, out_dir)
    logger.info("wrote %s/report.json, report.md, asr.png, metrics.png in %.0f s", out_dir, report["seconds"])
    return report


def _load_pair_datasets(config: EvalConfig) -> dict[str, list]:
    """The preference datasets to score, each cut to the largest subset any metric needs."""
    from plotpref.data import load_preference_data

    needed: dict[str, int | None] = {}
    if "preference" in config.metrics:
        for name in config.pref_datasets:
            needed[name] = config.n_pref_pairs
    if "perplexity" in config.metrics:
        current = needed.get(config.ppl_dataset, 0)
        needed[config.ppl_dataset] = None if current is None or config.n_ppl_pairs is None else max(current, config.n_ppl_pairs)
    return {name: load_preference_data(name)[:n] for name, n in needed.items()}


def _load_reward_model(path: str, device: str):
    from transformers import AutoModelForSequenceClassification

    from plotpref.models import load_tokenizer, resolve_model

    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model(path), dtype=torch.float32).eval().to(device)
    except (OSError, ValueError) as exc:
        raise PlotprefError(f"could not load reward_model {path} as a sequence classifier: {exc}") from exc
    return model, load_tokenizer(path)


def _preference_and_perplexity(report, models, config, datasets, scores, device) -> None:
    from plotpref.models import load_model, load_tokenizer

    references = {label: _reference_for(label, path, models, config) for label, path in models.items()}
    if "preference" in config.metrics:  # score the reference models that were not evaluated themselves
        for ref in {r for r in references.values() if r and r[0] == "path"}:
            logger.info("scoring reference model %s", ref[1])
            model, tokenizer = load_model(ref[1], dtype=config.dtype, device=device), load_tokenizer(ref[1])
            for name in config.pref_datasets:
                scores[(f"path:{ref[1]}", name)] = benchmarks.preference_scores(
                    model, tokenizer, datasets[name], batch_size=config.batch_size, max_length=config.max_length,
                    max_prompt_length=config.max_prompt_length, desc=f"reference {name}")
            del model
    for label in models:
        entry = report["models"][label]
        metrics = entry["metrics"]
        ref = references[label]
        for name in config.pref_datasets if "preference" in config.metrics else []:
            own, skipped = scores[(f"label:{label}", name)]
            own = own[: config.n_pref_pairs] if config.n_pref_pairs is not None else own
            if ref is None:
                why = "this model is the reference" if config.reference_model not in (None, "none") and label in (config.reference_model, "base") else "no reference model"
                result = benchmarks.preference_metrics(own, None, skipped, f"sum log-prob of chosen vs rejected ({why})")
            else:
                ref_scores = scores[(f"{ref[0]}:{ref[1]}", name)][0][: len(own)]
                result = benchmarks.preference_metrics(own, ref_scores, skipped, f"implicit reward log π − log π_ref, reference = {ref[1]}")
            result["seconds"] = entry.get(f"_scoring {name}", {}).get("seconds")
            metrics.setdefault("preference", {})[name] = result
        if "perplexity" in config.metrics:
            own, skipped = scores[(f"label:{label}", config.ppl_dataset)]
            own = own[: config.n_ppl_pairs] if config.n_ppl_pairs is not None else own
            metrics["perplexity"] = {**benchmarks.perplexity(own, skipped), "dataset": f"{config.ppl_dataset} (chosen responses)",
                                     "seconds": entry.get(f"_scoring {config.ppl_dataset}", {}).get("seconds")}
        for key in [k for k in entry if k.startswith("_scoring")]:
            del entry[key]


# ---------------------------------------------------------------- tables and charts


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value, digits=2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def scalar_metrics(entry: dict) -> dict[str, float | None]:
    """The headline numbers of one model, by column name (used by the table and the chart)."""
    m = entry["metrics"]
    out: dict[str, float | None] = {}
    for attack, result in m.get("harmlessness", {}).get("attacks", {}).items():
        out[f"ASR {attack} %"] = None if result["asr"] is None else 100 * result["asr"]
    if "over_refusal" in m:
        out["over-refusal %"] = None if m["over_refusal"]["refusal_rate"] is None else 100 * m["over_refusal"]["refusal_rate"]
    for name, result in m.get("preference", {}).items():
        short = name.removeprefix("hh-").removesuffix("-eval")
        out[f"pref acc {short} %"] = None if result["accuracy"] is None else 100 * result["accuracy"]
        out[f"margin {short}"] = result["mean_margin"]
    if "reward" in m:
        out["reward"] = m["reward"]["mean_score"]
    if "gsm8k" in m:
        out["GSM8K %"] = None if m["gsm8k"]["accuracy"] is None else 100 * m["gsm8k"]["accuracy"]
    if "perplexity" in m:
        out["perplexity"] = m["perplexity"]["perplexity"]
    return out


def logprob_only(entry: dict) -> set[str]:
    """Columns of :func:`scalar_metrics` that hold the sum log-prob comparison, not the implicit
    reward (the model has no reference, or is the reference): marked with "*" in tables and charts."""
    return {column for name, result in entry["metrics"].get("preference", {}).items() if result["implicit_accuracy"] is None
            for column in (f"pref acc {name.removeprefix('hh-').removesuffix('-eval')} %", f"margin {name.removeprefix('hh-').removesuffix('-eval')}")}


def write_markdown(report: dict) -> str:
    rows = {label: scalar_metrics(entry) for label, entry in report["models"].items()}
    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    lines = ["# plotpref evaluation", ""]
    lines += ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, values in rows.items():
        starred = logprob_only(report["models"][label])
        lines.append(f"| {label} | " + " | ".join(_num(values.get(c), 1 if "%" in c else 3) + ("*" if c in starred else "") for c in columns) + " |")
    lines.append("")
    first = next(iter(report["models"].values()))["metrics"]
    notes = []
    if "harmlessness" in first:
        judge = report["judge"]
        a = judge["agreement_with_humans"]
        notes.append(f"ASR = % of attacked behaviours judged jailbroken by the **{judge['name']}** judge, "
                     f"{report['behaviors']['n']} behaviours per attack ({', '.join(report['config']['behavior_sources'])}; "
                     f"HarmBench {report['config']['harmbench_split']} split), greedy, {report['config']['max_new_tokens']} new tokens.")
        notes.append(f"Judge agreement with HarmBench's human labels (n = {a['n']}): accuracy {_pct(a['accuracy'])}%, "
                     f"precision {_pct(a['precision'])}%, recall {_pct(a['recall'])}%, F1 {_num(a['f1'])}, Cohen's κ {_num(a['kappa'])}"
                     + (f"; reproduces HarmBench's precomputed keyword verdicts on {_pct(a['reproduces_precomputed'])}% of records." if "reproduces_precomputed" in a else "."))
        for attack, result in first["harmlessness"]["attacks"].items():
            if attack == "gcg":
                d = result["attack"]
                notes.append(f"GCG (nanogcg) ran with a tiny CPU budget: {result['n']} behaviour(s), {d['num_steps']} steps, "
                             f"search width {d['search_width']}, top-k {d['topk']}: far weaker than the paper's GCG.")
            if attack == "file":
                notes.append(f"file attack: {result['n']} attacker prompts from {result['attack']['file']}.")
    if "over_refusal" in first:
        notes.append(f"Over-refusal: % of {first['over_refusal']['n']} benign helpful-base prompts whose reply contains a refusal string.")
    for name, result in first.get("preference", {}).items():
        comparisons = sorted({e["metrics"]["preference"][name]["comparison"] for e in report["models"].values()})
        notes.append(f"pref acc / margin on {name} ({result['n']} pairs): " + "; ".join(comparisons) + ". Margin in nats, β = 1; "
                     "* = sum log-prob comparison, not an implicit reward.")
    if "gsm8k" in first:
        notes.append(f"GSM8K: exact match of the final number on the first {first['gsm8k']['n']} test questions, zero-shot, greedy, "
                     f"{first['gsm8k']['max_new_tokens']} new tokens.")
    if "perplexity" in first:
        p = first["perplexity"]
        notes.append(f"Perplexity: token-level, of the chosen responses of {p['dataset'].split()[0]}, {p['n']} pairs ({p['tokens']} tokens).")
    if "reward" in first:
        notes.append(f"reward: mean score of {report['config']['reward_model']} on the replies to {first['reward']['n']} benign prompts.")
    lines += ["Notes:", ""] + [f"- {n}" for n in notes + report["data_notes"]]
    if "harmlessness" in first:
        lines += ["", "## ASR by category (%)", ""]
        cats = list(dict.fromkeys(c for e in report["models"].values() for r in e["metrics"]["harmlessness"]["attacks"].values() for c in r["by_category"]))
        lines += ["| model | attack | " + " | ".join(cats) + " |", "|---|---|" + "---:|" * len(cats)]
        for label, entry in report["models"].items():
            for attack, r in entry["metrics"]["harmlessness"]["attacks"].items():
                lines.append(f"| {label} | {attack} | " + " | ".join(
                    f"{_pct(r['by_category'][c]['asr'])} (n={r['by_category'][c]['n']})" if c in r["by_category"] else "–" for c in cats) + " |")
    v = report["versions"]
    lines += ["", f"seed {report['seed']}; plotpref {v['plotpref']}, torch {v['torch']}, transformers {v['transformers']}; "
              f"total {report.get('seconds', 0):.0f} s on {report['device']}.", ""]
    return "\n".join(lines)


def plot_charts(report: dict, out_dir: str | Path) -> list[Path]:
    """asr.png (ASR per attack, one bar per model) and metrics.png (one panel per other metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    labels = list(report["models"])
    values = {label: scalar_metrics(report["models"][label]) for label in labels}
    colors = plt.get_cmap("tab10").colors
    written = []
    asr_cols = [c for c in dict.fromkeys(c for v in values.values() for c in v) if c.startswith("ASR ")]
    if asr_cols:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(asr_cols) * max(1, len(labels)) / 2 + 2), 4.5))
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(asr_cols))]
            ys = [values[label].get(c) or 0.0 for c in asr_cols]
            bars = ax.bar(xs, ys, width, label=label, color=colors[i % len(colors)])
            ax.bar_label(bars, labels=[_num(values[label].get(c), 0) for c in asr_cols], fontsize=8, padding=2)
        first = next(iter(report["models"].values()))["metrics"]["harmlessness"]["attacks"]
        ax.set_xticks(range(len(asr_cols)), [f"{c[4:-2]}\n(n={first[c[4:-2]]['n']})" if c[4:-2] in first else c[4:-2] for c in asr_cols])
        ax.set_ylabel("attack success rate (%)")
        ax.set_ylim(0, 110)
        judge = report.get("judge", {})
        n = report.get("behaviors", {}).get("n")
        ax.set_title(f"Attack success rate ({judge.get('name', '')} judge; {n} behaviours sampled; lower is safer)", fontsize=10)
        ax.legend(title="model", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "asr.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "asr.png")
    other = [c for c in dict.fromkeys(c for v in values.values() for c in v) if not c.startswith("ASR ")]
    if other:
        ncols = min(3, len(other))
        nrows = -(-len(other) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
        hints = {"over-refusal %": "lower is better", "perplexity": "lower is better", "GSM8K %": "higher is better", "reward": "higher is better"}
        for ax, column in zip(axes.flat, other):
            ys = [values[label].get(column) for label in labels]
            stars = ["*" if column in logprob_only(report["models"][label]) else "" for label in labels]
            bars = ax.bar(range(len(labels)), [y or 0.0 for y in ys], color=[colors[i % len(colors)] for i in range(len(labels))],
                          hatch=None)
            for bar, star in zip(bars, stars):
                if star:
                    bar.set_hatch("//")
            ax.bar_label(bars, labels=[_num(y, 1 if "%" in column else 2) + s for y, s in zip(ys, stars)], fontsize=8, padding=2)
            ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0, fontsize=8)
            hint = hints.get(column, "higher is better" if column.startswith(("pref", "margin")) else "")
            ax.set_title(f"{column}" + (f"\n({hint})" if hint else ""), fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.margins(y=0.2)
            if "%" in column:
                ax.set_ylim(0, 110)
        for ax in list(axes.flat)[len(other):]:
            ax.axis("off")
        if any(logprob_only(report["models"][label]) for label in labels):
            fig.text(0.01, 0.005, "* hatched: sum log-prob comparison (no reference model); other preference bars: implicit reward vs the reference",
                     fontsize=8, style="italic")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out_dir / "metrics.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "metrics.png")
    return written
