"""Pure metric functions: answer extraction for GSM8K and agreement statistics for judges.

Nothing here touches a model; every function is a function of plain Python values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["extract_final_number", "numbers_equal", "binary_agreement", "majority_vote"]

# A number as written in GSM8K answers and model outputs: optional sign, digits with optional
# thousands separators, optional decimals ("1,234.50", "-3", ".5").
_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_HASH_ANSWER = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")


def _to_float(text: str) -> float | None:
    text = text.replace(",", "").rstrip(".")
    try:
        return float(text)
    except ValueError:
        return None


def extract_final_number(text: str) -> float | None:
    """The final numeric answer of a GSM8K-style solution, or None when it has no number.

    The usual GSM8K extraction (Cobbe et al. 2021; lm-evaluation-harness' ``gsm8k`` task):
    the number after the last ``#### `` marker when there is one, otherwise the last number in
    the text. Thousands separators are stripped ("1,234" -> 1234.0); a leading "$" is ignored.
    """
    marked = _HASH_ANSWER.findall(text)
    if marked:
        value = _to_float(marked[-1])
        if value is not None:
            return value
    for candidate in reversed(_NUMBER.findall(text)):
        value = _to_float(candidate)
        if value is not None:
            return value
    return None


def numbers_equal(a: float | None, b: float | None, *, tol: float = 1e-6) -> bool:
    """Exact numeric match up to float rounding; None never matches."""
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def majority_vote(*labels: Sequence[int]) -> list[int]:
    """Per-item majority of an odd number of 0/1 label lists (e.g. HarmBench's three human labels)."""
    if len(labels) % 2 == 0:
        raise ValueError("majority_vote needs an odd number of label lists")
    return [int(sum(votes) * 2 > len(votes)) for votes in zip(*labels, strict=True)]


def binary_agreement(predicted: Sequence[bool | int], reference: Sequence[bool | int]) -> dict:
    """Agreement of binary predictions with reference labels (1 = positive, here "jailbroken").

    Returns n, accuracy, precision, recall and F1 of the positive class, Cohen's kappa

        κ = (p_o − p_e) / (1 − p_e),   p_o = accuracy,
        p_e = P(pred=1)·P(ref=1) + P(pred=0)·P(ref=0)

    and the confusion counts tp/fp/fn/tn. Undefined ratios (0/0) are reported as None.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions for {len(reference)} reference labels")
    tp = sum(1 for p, r in zip(predicted, reference) if p and r)
    fp = sum(1 for p, r in zip(predicted, reference) if p and not r)
    fn = sum(1 for p, r in zip(predicted, reference) if not p and r)
    tn = len(predicted) - tp - fp - fn
    n = len(predicted)

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    accuracy = ratio(tp + tn, n)
    kappa = None
    if n:
        p_e = ((tp + fp) / n) * ((tp + fn) / n) + ((tn + fn) / n) * ((tn + fp) / n)
        kappa = ratio(accuracy - p_e, 1 - p_e) if p_e != 1 else None
    return {"n": n, "accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
            "kappa": kappa, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
