"""Pure metric functions of plotpref.evaluate: GSM8K answer extraction and judge agreement statistics."""

import json
import math

import pytest

from plotpref.assets import asset_path
from plotpref.evaluate.benchmarks import load_gsm8k
from plotpref.evaluate.metrics import binary_agreement, extract_final_number, majority_vote, numbers_equal


def test_every_gsm8k_reference_answer_parses_to_its_hash_line():
    """All 1,319 reference solutions: the extractor must return the number on the "#### " line,
    parsed independently here with plain string operations."""
    lines = asset_path("gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1319
    for number, line in enumerate(lines, 1):
        answer = json.loads(line)["answer"]
        final_line = [row for row in answer.splitlines() if row.startswith("#### ")]
        assert len(final_line) == 1, number
        expected = float(final_line[0][len("#### "):].strip().replace(",", ""))
        assert numbers_equal(extract_final_number(answer), expected), (number, final_line[0])
    # The loader's reference numbers agree too.
    items = load_gsm8k(None)
    assert len(items) == 1319 and items[0].answer == 18.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 3 apples, then 5 more, so 8 in total.", 8.0),
        ("#### 1,234", 1234.0),
        ("The answer is #### 42 and later I mention 7", 42.0),  # the marked answer wins over the last number
        ("It costs $1,000,000.", 1_000_000.0),
        ("The temperature falls to -5 degrees", -5.0),
        ("Half: 0.5", 0.5),
        ("no digits at all", None),
        ("first #### 3 then #### 4", 4.0),  # the last marker
    ],
)
def test_extract_final_number_cases(text, expected):
    got = extract_final_number(text)
    assert (got is None and expected is None) or numbers_equal(got, expected)


def test_numbers_equal_rejects_none_and_different_values():
    assert not numbers_equal(None, 1.0)
    assert not numbers_equal(18.0, 18.5)
    assert numbers_equal(18, 18.0)


def test_binary_agreement_hand_computed():
    # pred: 1 1 1 0 0 0 1 0 ; ref: 1 1 0 0 0 1 1 0  -> tp 3, fp 1, fn 1, tn 3
    pred = [1, 1, 1, 0, 0, 0, 1, 0]
    ref = [1, 1, 0, 0, 0, 1, 1, 0]
    a = binary_agreement(pred, ref)
    assert (a["tp"], a["fp"], a["fn"], a["tn"], a["n"]) == (3, 1, 1, 3, 8)
    assert a["accuracy"] == pytest.approx(6 / 8)
    assert a["precision"] == pytest.approx(3 / 4) and a["recall"] == pytest.approx(3 / 4) and a["f1"] == pytest.approx(3 / 4)
    # p_o = 0.75, p_e = 0.5*0.5 + 0.5*0.5 = 0.5 -> kappa = 0.25 / 0.5
    assert a["kappa"] == pytest.approx(0.5)


def test_binary_agreement_edge_cases():
    perfect = binary_agreement([1, 0, 1], [1, 0, 1])
    assert perfect["accuracy"] == 1.0 and perfect["kappa"] == pytest.approx(1.0)
    never = binary_agreement([0, 0], [0, 1])
    assert never["precision"] is None and never["recall"] == 0.0  # 0/0 is reported as None
    assert never["kappa"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        binary_agreement([1], [1, 0])


def test_kappa_matches_the_definition_on_an_unbalanced_case():
    pred = [1] * 30 + [0] * 10 + [1] * 5 + [0] * 55
    ref = [1] * 30 + [1] * 10 + [0] * 5 + [0] * 55
    a = binary_agreement(pred, ref)
    p_o = 85 / 100
    p_e = (35 / 100) * (40 / 100) + (65 / 100) * (60 / 100)
    assert math.isclose(a["kappa"], (p_o - p_e) / (1 - p_e))


def test_majority_vote():
    assert majority_vote([1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]) == [1, 1, 1, 0]
    with pytest.raises(ValueError):
        majority_vote([1], [0])
