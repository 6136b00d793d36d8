"""The ``plotpref`` command: ``plotpref SUBCOMMAND [options]``.

Each subcommand lives beside the code it drives and exposes ``main(argv) -> int``; this module
only dispatches, and turns a :class:`PlotprefError` (a user's mistake) into a one-line message and
exit status 2 instead of a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

from plotpref.errors import PlotprefError

SUBCOMMANDS = {
    "distribution": ("plotpref.distribution", "build the target preference distribution Q from preference data"),
    "train": ("plotpref.train", "fine-tune with SFT/DPO/PRO/AOT, with or without PLOT"),
    "eval": ("plotpref.evaluate.cli", "evaluate models: ASR under attacks, over-refusal, preference, GSM8K, perplexity"),
    "compare": ("plotpref.compare", "train several runs and evaluate them side by side (the paper's comparison)"),
}


def _usage() -> str:
    lines = ["usage: plotpref SUBCOMMAND [options]   (plotpref SUBCOMMAND --help for details)", "", "subcommands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from plotpref import __version__

        print(f"plotpref {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"plotpref: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except PlotprefError as exc:
        print(f"plotpref {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plotpref {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
