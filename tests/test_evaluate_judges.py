"""Judges of plotpref.evaluate: the keyword judge against HarmBench's labelled set, and the
plumbing of the model judge with tiny random models (their verdicts are noise; only the parsing
and the wiring are checked)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from plotpref.errors import PlotprefError
from plotpref.evaluate.behaviors import behavior_catalog
from plotpref.evaluate.config import EvalConfig
from plotpref.evaluate.judges import (
    HARMBENCH_CLS_PROMPT,
    HarmBenchJudge,
    KeywordJudge,
    build_judge,
    judge_agreement,
    load_harmbench_val_set,
    load_refusal_strings,
    parse_yes_no,
)
from plotpref.evaluate.metrics import majority_vote
from plotpref.models import load_tokenizer


def test_keyword_judge_is_a_case_sensitive_substring_rule():
    judge = build_judge(EvalConfig())
    assert isinstance(judge, KeywordJudge) and len(judge.refusal_strings) == 29
    verdicts = judge.judge([None] * 4, ["Sure, here is how", "Well... I cannot help", "i cannot help", "That is illegal."])
    assert verdicts == [True, False, True, False]  # lower-case "i cannot" is not in the list


def test_keyword_judge_agreement_on_harmbench_labels_reproduces_the_precomputed_column():
    agreement = judge_agreement(KeywordJudge(load_refusal_strings("llm_attacks_evaluate")))
    records = load_harmbench_val_set()
    assert agreement["n"] == len(records) == 602
    assert agreement["reproduces_precomputed"] == 1.0  # our rule == HarmBench's own "advbench" verdicts
    human = majority_vote(*([r[f"human_{i}"] for r in records] for i in range(3)))
    assert agreement["tp"] + agreement["fn"] == sum(human)  # positives are the human-majority jailbreaks
    assert 0 < agreement["kappa"] < 1 and 0.5 < agreement["accuracy"] < 1


def test_unknown_judge_and_bad_refusal_list_are_user_errors(tmp_path):
    with pytest.raises(PlotprefError, match="known judges: harmbench, keyword"):
        build_judge(EvalConfig(judge="gpt4"))
    with pytest.raises(PlotprefError, match="bundled list"):
        load_refusal_strings("no_such_list")
    bad = tmp_path / "strings.json"
    bad.write_text("[]")
    with pytest.raises(PlotprefError, match="non-empty JSON list"):
        load_refusal_strings(str(bad))
    with pytest.raises(PlotprefError, match="judge_model"):
        EvalConfig(judge="harmbench").validated()


@pytest.mark.parametrize(("text", "verdict"), [("yes", True), (" Yes.", True), ("no", False), ("No, because", False), ("maybe", None), ("", None)])
def test_parse_yes_no(text, verdict):
    assert parse_yes_no(text) is verdict


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def _tiny_config(tokenizer, **extra):
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **extra)


def test_harmbench_prompt_holds_behaviour_context_and_truncated_generation(tokenizer):
    torch.manual_seed(0)
    judge = HarmBenchJudge(LlamaForCausalLM(_tiny_config(tokenizer)).eval(), tokenizer, max_generation_tokens=5)
    catalog = behavior_catalog()
    standard = next(b for b in catalog.values() if b.category == "standard")
    contextual = next(b for b in catalog.values() if b.category == "contextual")
    long_generation = "one two three four five six seven eight nine ten"
    plain, with_context = judge.prompts([standard, contextual], [long_generation, "short"])
    assert plain == HARMBENCH_CLS_PROMPT.format(behavior=standard.behavior, generation=tokenizer.decode(tokenizer(long_generation)["input_ids"][:5]))
    assert "six" not in plain  # cut to 5 tokens, as HarmBench cuts to 512
    assert "[CONTEXT]:\n" + contextual.context in with_context and contextual.behavior in with_context


def test_causal_lm_judge_output_is_parsed(tokenizer):
    torch.manual_seed(0)
    judge = HarmBenchJudge(LlamaForCausalLM(_tiny_config(tokenizer)).eval(), tokenizer, batch_size=2)
    behaviors = list(behavior_catalog().values())[:3]
    verdicts = judge.judge(behaviors, ["Sure, step 1 ...", "I cannot help with that.", "Here is a poem"])
    assert len(verdicts) == 3 and all(isinstance(v, bool) for v in verdicts)
    assert len(judge.raw_outputs) == 3
    # every raw answer was either parsed to the verdict or counted as unparsed (and then False)
    assert judge.unparsed == sum(parse_yes_no(t) is None for t in judge.raw_outputs)
    assert verdicts == [bool(parse_yes_no(t)) for t in judge.raw_outputs]
    assert judge.describe()["unparsed_answers"] == judge.unparsed


def test_sequence_classifier_judge_uses_label_one(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(_tiny_config(tokenizer, num_labels=2))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = HarmBenchJudge.load(str(tmp_path), batch_size=2)
    assert judge.is_classifier
    behaviors = list(behavior_catalog().values())[:3]
    generations = ["a", "b c", "d e f"]
    verdicts = judge.judge(behaviors, generations)
    tokenizer.padding_side = "left"
    with torch.no_grad():
        logits = judge.model(**tokenizer(judge.prompts(behaviors, generations), return_tensors="pt", padding=True)).logits
    assert verdicts == (logits.argmax(-1) == 1).tolist()
    # agreement runs through the same judge (on a few records)
    agreement = judge_agreement(judge, n=4)
    assert agreement["n"] == 4 and "reproduces_precomputed" not in agreement
