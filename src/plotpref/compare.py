"""``plotpref compare``: train several runs from the same start model, evaluate them all, report.

    plotpref compare --quick                          # DPO vs DPO+PLOT, small budget (the demo)
    plotpref compare --config configs/compare_main.yaml

A compare config (YAML)::

    output_dir: results/main
    model: null                 # start model (null = SmolLM2-135M-Instruct)
    train:                      # options shared by every run (any `plotpref train` option)
      max_steps: 100
    runs:                       # one entry per run: a name plus its own options
      - {name: dpo, objective: dpo, plot: none}
      - {name: dpo+plot, objective: dpo, plot: w1, plot_lambda: 8}
    eval_preset: quick          # quick | full: the `plotpref eval` preset
    eval: {}                    # EvalConfig overrides

The results folder holds ``runs/NAME/`` (each trained model, as `plotpref train` writes it),
``eval/`` (the `plotpref eval` report of the start model and every run), ``comparison.md`` and
``comparison.json`` (one row per model: training time and the headline metrics), and
``training_curves.png`` (base loss and PLOT term per step). A run whose folder already holds a
finished model is not trained again, so an interrupted compare picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from plotpref.config import PlotprefConfig, check_keys, load_yaml
from plotpref.errors import PlotprefError

logger = logging.getLogger(__name__)

# The shipped configs live in the repository's configs/ folder (plotpref is installed editable by `make setup`).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class CompareConfig:
    output_dir: str = "results/compare"
    model: str | None = None
    train: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    eval_preset: str = "quick"
    eval: dict = field(default_factory=dict)
    evaluate: bool = True

    def __post_init__(self):
        if not isinstance(self.runs, list) or not self.runs:
            raise PlotprefError("compare config: 'runs' must be a non-empty list of {name: ..., <train options>}")
        names = []
        for i, run in enumerate(self.runs):
            if not isinstance(run, dict) or not run.get("name"):
                raise PlotprefError(f"compare config: runs[{i}] needs a 'name'")
            if not re.fullmatch(r"[A-Za-z0-9_.+=-]+", str(run["name"])):
                raise PlotprefError(f"compare config: runs[{i}] name {run['name']!r}: use letters, digits and _.+=- only")
            names.append(run["name"])
            check_keys({k: v for k, v in run.items() if k != "name"}, PlotprefConfig, f"compare config runs[{i}] ({run['name']})")
        if len(set(names)) != len(names) or "base" in names:
            raise PlotprefError(f"compare config: run names must be unique and not 'base' (the start model): {names}")
        check_keys(self.train, PlotprefConfig, "compare config 'train'")
        if self.eval_preset not in ("quick", "full"):
            raise PlotprefError(f"compare config: eval_preset must be quick or full, not {self.eval_preset!r}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CompareConfig":
        data = load_yaml(path)
        check_keys(data, cls, f"config file {path}")
        return cls(**data)


def run_config(cfg: CompareConfig, run: dict) -> PlotprefConfig:
    options = {**cfg.train, **{k: v for k, v in run.items() if k != "name"}}
    options.setdefault("model", cfg.model)
    options["output_dir"] = str(Path(cfg.output_dir) / "runs" / run["name"])
    options.setdefault("save_strategy", "no")
    options.setdefault("report_to", "tensorboard")
    return PlotprefConfig(**options)


def _check_same_options(name: str, run_cfg: PlotprefConfig) -> None:
    """Refuse to reuse a trained run whose saved options differ from the config's (a stale result)."""
    import yaml  # noqa: PLC0415

    saved_path = Path(run_cfg.output_dir) / "plotpref_config.yaml"
    if not saved_path.exists():
        return  # trained by an older plotpref: nothing to compare against
    saved = yaml.safe_load(saved_path.read_text()) or {}
    wanted = yaml.safe_load(yaml.safe_dump(run_cfg.plotpref_fields(), sort_keys=False))
    changed = [f"{key}: {saved.get(key)!r} -> {wanted.get(key)!r}" for key in sorted(set(saved) | set(wanted))
               if key != "output_dir" and saved.get(key) != wanted.get(key)]
    if changed:
        raise PlotprefError(
            f"run {name!r}: {run_cfg.output_dir} holds a model trained with other options ({'; '.join(changed)}); "
            "pass --overwrite to retrain it, or set another output_dir (--output_dir) to keep both")


def train_runs(cfg: CompareConfig, overwrite: bool = False) -> dict[str, dict]:
    from plotpref.train import train

    summaries = {}
    for i, run in enumerate(cfg.runs, 1):
        run_cfg = run_config(cfg, run)
        summary_path = Path(run_cfg.output_dir) / "train_summary.json"
        if summary_path.exists() and not overwrite:
            _check_same_options(run["name"], run_cfg)
            logger.info("[%d/%d] %s: already trained, reusing %s", i, len(cfg.runs), run["name"], run_cfg.output_dir)
            summaries[run["name"]] = json.loads(summary_path.read_text())
            continue
        logger.info("[%d/%d] training %s (%s, plot=%s)", i, len(cfg.runs), run["name"], run_cfg.objective, run_cfg.plot)
        summaries[run["name"]] = train(run_cfg)
    return summaries


def _eval_config(cfg: CompareConfig):
    from plotpref.evaluate.config import EvalConfig

    base = EvalConfig.quick() if cfg.eval_preset == "quick" else EvalConfig()
    return base.replace(_source="compare config 'eval'", **cfg.eval) if cfg.eval else base


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = value


def _last(history: list[dict], key: str):
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def comparison_rows(cfg: CompareConfig, summaries: dict[str, dict], report: dict | None) -> list[dict]:
    """One row per model: its run settings, training figures and headline eval metrics."""
    from plotpref.evaluate.report import logprob_only, scalar_metrics

    models = (report or {}).get("models", {})
    rows = []
    for label in ["base", *summaries]:
        row = {"model": label}
        if label == "base":
            row.update(objective="-", plot="-", plot_lambda=0.0)
        else:
            s = summaries[label]
            hist = s.get("log_history", [])
            row.update(objective=s["objective"], plot=s["plot"], plot_lambda=s["plot_lambda"],
                       steps=s["global_step"], seconds_per_step=round(s["seconds_per_step"], 3),
                       final_base_loss=_last(hist, "base_loss"), final_plot_term=_last(hist, "plot_term"))
        if label in models:
            row.update(scalar_metrics(models[label]))
            # Columns that compare sum log-probs (the model is its own reference), not implicit rewards.
            row["logprob_only_columns"] = sorted(logprob_only(models[label]))
        rows.append(row)
    return rows


def _markdown(rows: list[dict]) -> str:
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns and k != "logprob_only_columns"]

    def fmt(row, column):
        v = row.get(column)
        if v is None:
            return ""
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text + "*" if column in row.get("logprob_only_columns", ()) else text

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r, c) for c in columns) + " |" for r in rows]
    note = ("\n\\* sum log-prob comparison of chosen vs rejected (the model is its own reference); the other "
            "preference columns are implicit rewards log π − log π_base, so the two are not comparable.\n")
    return "\n".join(lines) + "\n" + (note if any(r.get("logprob_only_columns") for r in rows) else "")


def plot_training_curves(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, s) in enumerate(summaries.items()):  # one colour per run in both panels
        hist = s.get("log_history", [])
        for ax, key in zip(axes, ("base_loss", "plot_term")):
            points = [(h["step"], h[key]) for h in hist if key in h]
            if points:
                ax.plot(*zip(*points), marker=".", label=name, color=colors[i % len(colors)])
    axes[0].set(title="base objective loss", xlabel="optimizer step", ylabel="loss")
    axes[1].set(title="PLOT term (mean W1(p_t, Q) or variant)", xlabel="optimizer step", ylabel="value")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(cfg: CompareConfig, overwrite: bool = False) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    start = time.perf_counter()
    summaries = train_runs(cfg, overwrite=overwrite)
    train_seconds = time.perf_counter() - start
    plot_training_curves(summaries, out / "training_curves.png")

    report = None
    if cfg.evaluate:
        from plotpref.evaluate import run_evaluation

        # "base" is the start model; the evaluation uses it as the reference for implicit rewards.
        models = {"base": cfg.model, **{name: str(out / "runs" / name) for name in summaries}}
        report = run_evaluation(models, _eval_config(cfg), out / "eval")
    rows = comparison_rows(cfg, summaries, report)
    result = {"rows": rows, "train_seconds": train_seconds, "total_seconds": time.perf_counter() - start,
              "eval_report": str(out / "eval" / "report.json") if report else None}
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    header = (f"# plotpref compare: {out}\n\nStart model: {cfg.model or 'SmolLM2-135M-Instruct'}; "
              f"training data: {cfg.train.get('train_data', 'hh-harmless-train')} "
              "(HH-RLHF harmless-base *test* lines 501-2312: the train split is not available here, a deviation "
              "from the paper). Evaluation: see eval/report.md.\n\n")
    (out / "comparison.md").write_text(header + _markdown(rows))
    print(header + _markdown(rows))
    print(f"results in {out}/ (comparison.md, comparison.json, training_curves.png, eval/)")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plotpref compare", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", help="compare config (YAML); see configs/compare_*.yaml")
    group.add_argument("--quick", action="store_true", help="the quick preset: configs/compare_quick.yaml")
    parser.add_argument("--output_dir", help="override the config's output_dir")
    parser.add_argument("--no_eval", action="store_true", help="train only")
    parser.add_argument("--overwrite", action="store_true", help="retrain runs that already have a model")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="train and evaluate only these runs of the config")
    args = parser.parse_args(argv)
    if not (args.quick or args.config):
        raise PlotprefError("say what to compare: --quick (the demo preset) or --config FILE (see configs/compare_*.yaml)")
    path = CONFIG_DIR / "compare_quick.yaml" if args.quick else Path(args.config)
    cfg = CompareConfig.from_yaml(path)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.no_eval:
        cfg.evaluate = False
    if args.only:
        unknown = sorted(set(args.only) - {run["name"] for run in cfg.runs})
        if unknown:
            raise PlotprefError(f"--only: no run named {', '.join(unknown)} in {path}; runs: "
                                f"{', '.join(run['name'] for run in cfg.runs)}")
        cfg.runs = [run for run in cfg.runs if run["name"] in args.only]
    compare(cfg, overwrite=args.overwrite)
    return 0
