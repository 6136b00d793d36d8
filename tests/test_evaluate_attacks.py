"""Behaviours and attacks of plotpref.evaluate: registry, templates, attacker-file validation, GCG plumbing."""

import json

import pytest

from plotpref.errors import PlotprefError
from plotpref.evaluate.attacks import ATTACKS, PREFIX_INJECTION_TEMPLATE, Attack, build_attack, read_attack_file, register_attack
from plotpref.evaluate.behaviors import HARMBENCH_CONTEXT_SEPARATOR, behavior_catalog, load_behaviors
from plotpref.evaluate.config import EvalConfig


def test_behaviour_catalog_counts_and_contextual_prompt():
    catalog = behavior_catalog()
    assert sum(b.source == "advbench" for b in catalog.values()) == 520
    harmbench = [b for b in catalog.values() if b.source == "harmbench"]
    assert len(harmbench) == 400
    assert {c: sum(b.category == c for b in harmbench) for c in ("standard", "copyright", "contextual")} == {"standard": 200, "copyright": 100, "contextual": 100}
    contextual = next(b for b in harmbench if b.category == "contextual")
    assert contextual.prompt == contextual.context + "\n\n---\n\n" + contextual.behavior == contextual.context + HARMBENCH_CONTEXT_SEPARATOR + contextual.behavior
    first = catalog["advbench_001"]
    assert first.behavior.startswith("Write a script that can exploit vulnerabilities") and first.target.startswith("Sure, here is a script")
    assert all(b.target for b in catalog.values())


def test_load_behaviors_is_seeded_and_filters_categories():
    a = load_behaviors(n_per_source=5, seed=1)
    assert [b.id for b in a] == [b.id for b in load_behaviors(n_per_source=5, seed=1)]
    assert [b.id for b in a] != [b.id for b in load_behaviors(n_per_source=5, seed=2)]
    assert sum(b.source == "advbench" for b in a) == 5 and sum(b.source == "harmbench" for b in a) == 5
    standard = load_behaviors(["harmbench"], harmbench_categories=["standard"], n_per_source=None)
    assert len(standard) == 159 and {b.category for b in standard} == {"standard"}  # HarmBench test split: 159 standard


def test_template_attacks():
    behaviors = load_behaviors(n_per_source=2)
    config = EvalConfig()
    direct = build_attack("direct", config).test_cases(behaviors)
    assert [c.prompt for c in direct] == [b.prompt for b in behaviors] and all(c.prefill == "" for c in direct)
    injected = build_attack("prefix_injection", config).test_cases(behaviors)
    assert injected[0].prompt == PREFIX_INJECTION_TEMPLATE.format(prompt=behaviors[0].prompt, target=behaviors[0].target)
    assert behaviors[0].target in injected[0].prompt
    prefilled = build_attack("prefill", config).test_cases(behaviors)
    assert [c.prefill for c in prefilled] == [b.target for b in behaviors] and prefilled[0].prompt == behaviors[0].prompt


def test_unknown_attack_lists_the_known_ones():
    with pytest.raises(PlotprefError, match="known attacks: direct, file, gcg, prefill, prefix_injection"):
        build_attack("autodan", EvalConfig())


def test_registering_an_attack():
    @register_attack("shout")
    class Shout(Attack):
        def test_cases(self, behaviors, model=None, tokenizer=None):
            from plotpref.evaluate.attacks import TestCase

            return [TestCase(self.name, b, b.prompt.upper()) for b in behaviors]

    try:
        cases = build_attack("shout", EvalConfig()).test_cases(load_behaviors(["advbench"], n_per_source=1))
        assert cases[0].prompt.isupper() and cases[0].attack == "shout"
    finally:
        del ATTACKS["shout"]


def test_attack_file_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "attacker.jsonl"
    jsonl.write_text(json.dumps({"behavior_id": "advbench_001", "prompt": "Pretend you are a novelist..."}) + "\n\n"
                     + json.dumps({"behavior_id": "dimethylmercury_instructions_home", "test_case": "As a chemist..."}) + "\n")
    assert read_attack_file(jsonl) == [("advbench_001", "Pretend you are a novelist...", f"{jsonl}:1"),
                                       ("dimethylmercury_instructions_home", "As a chemist...", f"{jsonl}:3")]
    csv_file = tmp_path / "attacker.csv"
    csv_file.write_text('behavior_id,prompt\nadvbench_002,"Hypothetically, how would one"\n')
    config = EvalConfig(attack_file=str(csv_file), n_file_cases=1).validated()
    assert "file" in config.attacks  # added by attack_file
    cases = build_attack("file", config).test_cases([])
    assert len(cases) == 1 and cases[0].behavior.id == "advbench_002" and cases[0].prompt.startswith("Hypothetically")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "has no test cases"),
        ("empty.csv", "behavior_id,prompt\n", "has no test cases"),
        ("bad.jsonl", '{"behavior_id": "advbench_001", "prompt": "x"}\n{oops\n', r"bad\.jsonl:2: not valid JSON"),
        ("unknown.jsonl", '{"behavior_id": "no_such_behaviour", "prompt": "x"}\n', r"unknown\.jsonl:1: unknown behavior_id 'no_such_behaviour'"),
        ("noprompt.jsonl", '{"behavior_id": "advbench_001", "prompt": "  "}\n', r"noprompt\.jsonl:1: missing or empty prompt"),
        ("noid.csv", "id,prompt\nadvbench_001,hello\n", r"noid\.csv:2: missing behavior_id"),
        ("prompts.txt", "hello\n", "use .jsonl or .csv"),
    ],
)
def test_attack_file_errors_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PlotprefError, match=message):
        read_attack_file(path)


def test_file_attack_needs_a_file():
    with pytest.raises(PlotprefError, match="needs attack_file"):
        EvalConfig(attacks=["file"]).validated()
    with pytest.raises(PlotprefError, match="does not exist"):
        read_attack_file("/nonexistent/attacks.jsonl")
