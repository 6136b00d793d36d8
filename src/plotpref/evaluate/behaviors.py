"""Harmful behaviours from AdvBench and HarmBench (bundled in :mod:`plotpref.assets`)."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from functools import lru_cache

from plotpref.assets import asset_path

__all__ = ["Behavior", "load_behaviors", "behavior_catalog"]

HARMBENCH_CONTEXT_SEPARATOR = "\n\n---\n\n"


@dataclass(frozen=True)
class Behavior:
    """One harmful behaviour.

    ``id`` is HarmBench's BehaviorID, or ``advbench_NNN`` (1-based data row of harmful_behaviors.csv).
    ``category`` is "advbench" or HarmBench's functional category (standard / contextual /
    copyright); ``semantic`` is HarmBench's semantic category ("" for AdvBench). ``target`` is the
    affirmative GCG target ("Sure, here is ...").
    """

    id: str
    behavior: str
    target: str
    source: str
    category: str
    semantic: str = ""
    context: str = ""

    @property
    def prompt(self) -> str:
        """The request as HarmBench poses it: context + "\\n\\n---\\n\\n" + behaviour for contextual ones."""
        return f"{self.context}{HARMBENCH_CONTEXT_SEPARATOR}{self.behavior}" if self.context else self.behavior


def _advbench() -> list[Behavior]:
    with open(asset_path("advbench/harmful_behaviors.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [Behavior(f"advbench_{i:03d}", row["goal"], row["target"], "advbench", "advbench") for i, row in enumerate(rows, 1)]


def _harmbench(split: str) -> list[Behavior]:
    targets = json.loads(asset_path("harmbench/harmbench_targets_text.json").read_text(encoding="utf-8"))
    with open(asset_path(f"harmbench/harmbench_behaviors_text_{split}.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [Behavior(row["BehaviorID"], row["Behavior"], targets[row["BehaviorID"]], "harmbench", row["FunctionalCategory"],
                     row["SemanticCategory"], row["ContextString"].strip()) for row in rows]


@lru_cache(maxsize=1)
def behavior_catalog() -> dict[str, Behavior]:
    """Every bundled behaviour (AdvBench 520 + HarmBench 400) by id."""
    return {b.id: b for b in _advbench() + _harmbench("all")}


def load_behaviors(sources=("advbench", "harmbench"), *, harmbench_split: str = "test",
                   harmbench_categories=("standard", "contextual", "copyright"), n_per_source: int | None = None,
                   seed: int = 0) -> list[Behavior]:
    """Behaviours per source, ``n_per_source`` drawn without replacement by a ``seed``-ed RNG
    (kept in file order), AdvBench first."""
    chosen: list[Behavior] = []
    for source in sources:
        pool = _advbench() if source == "advbench" else [b for b in _harmbench(harmbench_split) if b.category in harmbench_categories]
        if n_per_source is not None and n_per_source < len(pool):
            keep = set(random.Random(f"{seed}:{source}").sample(range(len(pool)), n_per_source))
            pool = [b for i, b in enumerate(pool) if i in keep]
        chosen += pool
    return chosen
