"""Real data bundled with plotpref (see PROVENANCE.md and the LICENSE beside each folder)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def asset_path(relative: str) -> Path:
    """Absolute path of a bundled data file, e.g. ``asset_path("gsm8k/test.jsonl")``."""
    path = ASSETS_DIR / relative
    if not path.exists():
        raise FileNotFoundError(f"bundled data file {relative!r} is missing from {ASSETS_DIR}")
    return path
