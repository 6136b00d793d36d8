"""``plotpref eval MODEL [MODEL ...] --out DIR [--quick] [--config eval.yaml] [--FIELD VALUE ...]``

MODEL is ``LABEL=PATH`` or ``PATH`` (labelled by its folder name); ``base`` (or ``default``) is
the default model. Every :class:`EvalConfig` field is a flag (``n_gsm8k`` -> ``--n-gsm8k``; lists
take several values; ``none`` means null for optional fields).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from plotpref.errors import PlotprefError
from plotpref.evaluate.config import EvalConfig


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(text: str, kind, optional: bool):
    if optional and text.lower() in ("none", "null"):
        return None
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plotpref eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL", help="LABEL=PATH, PATH, or 'base' for the default model")
    parser.add_argument("--out", default="eval_out", help="output folder (default: eval_out)")
    parser.add_argument("--quick", action="store_true", help="start from the quick preset (small subsets, about 2 min per 135M model on CPU)")
    parser.add_argument("--config", help="YAML file of EvalConfig fields (applied after --quick, before the flags below)")
    group = parser.add_argument_group("evaluation settings (EvalConfig fields; see configs/eval.yaml)")
    hints = typing.get_type_hints(EvalConfig)
    for f in dataclasses.fields(EvalConfig):
        hint, args = hints[f.name], typing.get_args(hints[f.name])
        optional = type(None) in args
        if optional:
            hint = next(a for a in args if a is not type(None))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if typing.get_origin(hint) is list:
            group.add_argument(_flag(f.name), nargs="+", default=argparse.SUPPRESS, metavar="NAME", help=f"default: {' '.join(default)}")
        else:
            group.add_argument(_flag(f.name), type=lambda t, k=hint, o=optional: _parse_value(t, k, o), default=argparse.SUPPRESS,
                               metavar=hint.__name__.upper(), help=f"default: {default}")
    return parser


def parse_models(specs: list[str]) -> dict[str, str | None]:
    """``["base", "dpo=runs/dpo"]`` -> ``{"base": None, "dpo": "runs/dpo"}``; labels must be unique."""
    models: dict[str, str | None] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = (spec, None) if spec in ("base", "default") else (Path(spec.rstrip("/")).name or spec, spec)
        elif not label or not path:
            raise PlotprefError(f"model {spec!r}: empty {'label' if not label else 'path'} around '='; write LABEL=PATH "
                                "(LABEL=base for the default model)")
        elif path in ("base", "default"):
            path = None
        if label in models:
            raise PlotprefError(f"model label {label!r} is given twice: name them LABEL=PATH")
        models[label] = path
    return models


def main(argv: list[str]) -> int:
    from plotpref.evaluate.report import run_evaluation

    args = build_parser().parse_args(argv)
    config = EvalConfig.quick() if args.quick else EvalConfig()
    if args.config:
        config = EvalConfig.from_yaml(args.config, base=config)
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if overrides:
        config = config.replace(_source="command line", **overrides)
    report = run_evaluation(parse_models(args.models), config, args.out)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"report: {Path(args.out) / 'report.json'} ({report['seconds']:.0f} s)")
    return 0
