"""End to end: run_evaluation / plotpref eval on tiny random models (report files, determinism,
reference handling, reward-model plumbing) and the command line's error handling."""

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from plotpref.cli import main as plotpref_main
from plotpref.evaluate import EvalConfig, run_evaluation, strip_timings
from plotpref.evaluate.benchmarks import preference_metrics
from plotpref.evaluate.cli import parse_models
from plotpref.errors import PlotprefError
from plotpref.models import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _save_tiny(path: Path, seed: int, cls=LlamaForCausalLM, **extra) -> str:
    tokenizer = load_tokenizer(None)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=cls is LlamaForCausalLM, **extra)
    torch.manual_seed(seed)
    cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"base": _save_tiny(root / "base", 0), "tuned": _save_tiny(root / "tuned", 1),
            "rm": _save_tiny(root / "rm", 2, LlamaForSequenceClassification, num_labels=1)}


def _small_config(**overrides) -> EvalConfig:
    values = dict(n_behaviors=2, max_new_tokens=4, attacks=["direct", "prefill", "gcg"], gcg_behaviors=1, gcg_steps=1, gcg_search_width=8,
                  gcg_topk=8, gcg_optim_str_init="x x x", n_benign=3, n_pref_pairs=3, n_gsm8k=2, gsm8k_max_new_tokens=4, n_ppl_pairs=4,
                  max_length=96, max_prompt_length=48, batch_size=4, judge_agreement_n=40)
    values.update(overrides)
    return EvalConfig(**values).validated()


@pytest.fixture(scope="module")
def two_runs(tiny_models, tmp_path_factory):
    models = {"base": tiny_models["base"], "tuned": tiny_models["tuned"]}
    config = _small_config(reward_model=tiny_models["rm"])
    first, second = tmp_path_factory.mktemp("run1"), tmp_path_factory.mktemp("run2")
    return run_evaluation(models, config, first), run_evaluation(models, config, second), first, second


def test_same_seed_same_report(two_runs):
    first, second, dir1, dir2 = two_runs
    assert strip_timings(first) == strip_timings(second)
    assert (dir1 / "generations" / "tuned.jsonl").read_text() == (dir2 / "generations" / "tuned.jsonl").read_text()
    assert json.loads((dir1 / "report.json").read_text())["models"].keys() == {"base", "tuned"}


def test_report_contents(two_runs):
    report, _, out, _ = two_runs
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "asr.png", "metrics.png", "generations"}
    assert (out / "asr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["versions"]) >= {"plotpref", "torch", "transformers"} and report["config"]["seed"] == 0
    agreement = report["judge"]["agreement_with_humans"]
    assert agreement["n"] == 40 and agreement["reproduces_precomputed"] == 1.0
    tuned = report["models"]["tuned"]["metrics"]
    attacks = tuned["harmlessness"]["attacks"]
    assert list(attacks) == ["direct", "prefill", "gcg"]
    assert attacks["direct"]["n"] == 4 and attacks["gcg"]["n"] == 1 and attacks["gcg"]["attack"]["num_steps"] == 1
    for result in attacks.values():
        assert result["asr"] == result["jailbroken"] / result["n"]
        assert sum(c["n"] for c in result["by_category"].values()) == result["n"]
    lines = [json.loads(line) for line in (out / "generations" / "tuned.jsonl").read_text().splitlines()]
    prefill = [r for r in lines if r.get("attack") == "prefill"]
    assert all(r["output"].startswith(r["prefill"]) and r["prefill"] for r in prefill)
    assert tuned["over_refusal"]["n"] == 3 and tuned["gsm8k"]["n"] == 2 and tuned["reward"]["n"] == 3
    assert all(isinstance(tuned[m]["seconds"], float) for m in ("harmlessness", "over_refusal", "gsm8k", "reward", "perplexity"))
    # "tuned" is compared with the evaluated "base" through implicit rewards; "base" is the reference itself
    harmless = tuned["preference"]["hh-harmless-eval"]
    assert harmless["n"] == 3 and "reference = base" in harmless["comparison"] and harmless["implicit_accuracy"] is not None
    base = report["models"]["base"]["metrics"]["preference"]["hh-harmless-eval"]
    assert base["implicit_accuracy"] is None and base["accuracy"] == base["logp_accuracy"]
    markdown = (out / "report.md").read_text()
    table = markdown.split("\n\n")[1].splitlines()  # the comparison table: header, rule, one row per model
    assert [row.split("|")[1].strip() for row in table[2:]] == ["base", "tuned"]
    assert table[0].count("|") == table[2].count("|")
    assert "Cohen's κ" in markdown and "GCG (nanogcg) ran with a tiny CPU budget" in markdown


def test_perplexity_and_implicit_reward_from_the_pair_scores(two_runs):
    """Recompute the headline preference numbers from per-pair log-probs scored independently."""
    from plotpref.data import load_preference_data
    from plotpref.evaluate.generation import score_pairs
    from plotpref.models import load_model

    report = two_runs[0]
    examples = load_preference_data("hh-helpful-eval")[:4]
    tokenizer = load_tokenizer(report["models"]["base"]["path"])
    scores = {label: score_pairs(load_model(report["models"][label]["path"]), tokenizer, examples, max_length=96, max_prompt_length=48)[0]
              for label in ("base", "tuned")}
    tuned, base = scores["tuned"], scores["base"]
    expected_ppl = torch.exp(-tuned[:, 0].sum() / tuned[:, 1].sum()).item()
    assert report["models"]["tuned"]["metrics"]["perplexity"]["perplexity"] == pytest.approx(expected_ppl, rel=1e-6)
    margin = (tuned[:3, 0] - base[:3, 0]) - (tuned[:3, 2] - base[:3, 2])
    helpful = report["models"]["tuned"]["metrics"]["preference"]["hh-helpful-eval"]
    assert helpful["implicit_margin"] == pytest.approx(margin.mean().item(), rel=1e-6)
    assert helpful["implicit_accuracy"] == pytest.approx((margin > 0).double().mean().item())


def test_preference_metrics_hand_computed():
    # columns: log π(y+), |y+|, log π(y−), |y−|
    policy = torch.tensor([[-10.0, 5, -12.0, 5], [-8.0, 4, -7.0, 4], [-5.0, 3, -5.0, 3]], dtype=torch.float64)
    reference = torch.tensor([[-11.0, 5, -11.0, 5], [-9.0, 4, -6.0, 4], [-5.0, 3, -6.0, 3]], dtype=torch.float64)
    plain = preference_metrics(policy, None, 0, "sum log-prob")
    assert plain["accuracy"] == pytest.approx(1 / 3)  # only pair 0; pair 2 is a tie
    assert plain["mean_margin"] == pytest.approx((2 - 1 + 0) / 3) and plain["implicit_accuracy"] is None
    implicit = preference_metrics(policy, reference, 0, "implicit")
    # r+ − r−: (1 − (−1)) = 2, (1 − (−1)) = 2, (0 − 1) = −1
    assert implicit["accuracy"] == pytest.approx(2 / 3) and implicit["mean_margin"] == pytest.approx(1.0)
    assert implicit["logp_accuracy"] == plain["accuracy"]


def test_quick_yaml_matches_the_preset():
    assert EvalConfig.from_yaml(REPO / "configs" / "eval_quick.yaml") == EvalConfig.quick()
    assert EvalConfig.from_yaml(REPO / "configs" / "eval.yaml") == EvalConfig()


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_gsm8k: 10\nn_gsmk: 5\n")
    with pytest.raises(PlotprefError, match=r"bad\.yaml: unknown EvalConfig field\(s\) n_gsmk"):
        EvalConfig.from_yaml(bad)
    bad.write_text("n_gsm8k: ten\n")
    with pytest.raises(PlotprefError, match="n_gsm8k must be int"):
        EvalConfig.from_yaml(bad)
    with pytest.raises(PlotprefError, match="unknown metric"):
        EvalConfig(metrics=["bleu"]).validated()


def test_parse_models():
    assert parse_models(["base", "dpo=runs/dpo", "runs/pro/"]) == {"base": None, "dpo": "runs/dpo", "pro": "runs/pro/"}
    with pytest.raises(PlotprefError, match="given twice"):
        parse_models(["a=x", "a=y"])
    assert parse_models(["start=base"]) == {"start": None}
    # An empty side of '=' (e.g. an unset shell variable) is an error, not the default model.
    for spec, side in (("dpo=", "path"), ("=runs/dpo", "label")):
        with pytest.raises(PlotprefError, match=f"empty {side}"):
            parse_models([spec])


def _cli_error(capsys, argv) -> str:
    assert plotpref_main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("plotpref eval: error: ")
    return err


def test_cli_errors_are_one_line_with_exit_code_2(capsys, tmp_path, tiny_models):
    out = str(tmp_path / "out")
    assert "does not exist" in _cli_error(capsys, ["./no/such/model", "--out", out])
    assert "known attacks:" in _cli_error(capsys, [tiny_models["base"], "--attacks", "direct", "autodan", "--out", out])
    assert "known judges:" in _cli_error(capsys, [tiny_models["base"], "--judge", "gpt4", "--out", out])
    empty = tmp_path / "attacks.jsonl"
    empty.write_text("")
    assert "has no test cases" in _cli_error(capsys, [tiny_models["base"], "--attack-file", str(empty), "--out", out])
    assert not (tmp_path / "out" / "report.json").exists()


def test_cli_quick_flag_and_overrides_reach_the_config(tmp_path, tiny_models, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("n_gsm8k: 1\ngsm8k_max_new_tokens: 3\n")
    argv = ["eval", f"tiny={tiny_models['base']}", "--quick", "--config", str(config), "--metrics", "gsm8k", "--n-gsm8k", "2", "--out", str(tmp_path / "o")]
    assert plotpref_main(argv) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["config"]["n_gsm8k"] == 2 and report["config"]["gsm8k_max_new_tokens"] == 3  # flag > YAML > preset
    assert report["config"]["n_pref_pairs"] == EvalConfig.quick().n_pref_pairs
    assert report["models"]["tiny"]["metrics"]["gsm8k"]["n"] == 2 and "harmlessness" not in report["models"]["tiny"]["metrics"]
    assert "| tiny |" in capsys.readouterr().out


@pytest.mark.slow
def test_real_model_same_seed_same_report(tmp_path):
    config = EvalConfig(n_behaviors=1, max_new_tokens=16, attacks=["direct", "prefill"], n_benign=2, n_pref_pairs=2, n_gsm8k=1,
                        gsm8k_max_new_tokens=32, n_ppl_pairs=2, judge_agreement_n=10)
    first = run_evaluation({"base": None}, config, tmp_path / "a")
    second = run_evaluation({"base": None}, config, tmp_path / "b")
    assert strip_timings(first) == strip_timings(second)
    assert first["models"]["base"]["metrics"]["perplexity"]["perplexity"] < 100  # a trained model, not noise
