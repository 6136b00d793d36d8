"""plotpref.distribution: ΔF and Q computed by hand on a tiny vocabulary, the transforms, the
diagnostics against scipy, save/load and the cache, and the command line on the real model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from plotpref.data import PreferenceExample, load_preference_data
from plotpref.distribution import (
    PreferenceDistribution,
    build_distribution,
    diagnostics,
    load_or_build_distribution,
    preference_distribution,
    token_counts,
)
from plotpref.errors import PlotprefError

WORDS = ["[PAD]", "<eos>", "a", "b", "c", "d", "q"]  # ids 0..6
PAD, EOS, A, B, C, D, Q_ = range(7)
V = 8  # the "model" has one more output than the tokenizer has tokens


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A word-level tokenizer without a chat template: prompt + response + <eos> layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[PAD]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", eos_token="<eos>")
    tokenizer.name_or_path = "tiny-words"
    return tokenizer


def pair(chosen: str, rejected: str, prompt: str = "q") -> PreferenceExample:
    return PreferenceExample(prompt=prompt, responses=[chosen, rejected], source="tiny:1")


def test_hand_computed_delta_f_and_min_shift_q(tiny_tokenizer):
    # chosen "a a b": F+ = {a: 2/3, b: 1/3}; rejected "b c": F- = {b: 1/2, c: 1/2}; <eos> excluded.
    dist = build_distribution([pair("a a b", "b c")], tiny_tokenizer, vocab_size=V)
    expected_delta = torch.zeros(V, dtype=torch.float64)
    expected_delta[A], expected_delta[B], expected_delta[C] = 2 / 3, 1 / 3 - 1 / 2, -1 / 2
    torch.testing.assert_close(dist.delta_f, expected_delta, rtol=0, atol=1e-15)
    # min-shift: f = ΔF + 1/2 -> a 7/6, b 1/3, c 0, five other tokens 1/2 each; Σf = 4 = V·|min ΔF|
    expected_q = torch.full((V,), 1 / 8, dtype=torch.float64)
    expected_q[A], expected_q[B], expected_q[C] = 7 / 24, 1 / 12, 0.0
    torch.testing.assert_close(dist.q, expected_q, rtol=0, atol=1e-15)
    assert dist.counts_plus.tolist() == [0, 0, 2, 1, 0, 0, 0, 0] and dist.counts_minus.tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert dist.metadata["tokens"] == {"chosen": 3, "rejected": 2, "seen": 3}
    assert dist.q.dtype == torch.float64 and dist.vocab_size == V


def test_special_tokens_counted_on_request(tiny_tokenizer):
    dist = build_distribution([pair("a a b", "b c")], tiny_tokenizer, vocab_size=V, exclude_special=False)
    assert dist.f_plus[EOS] == pytest.approx(1 / 4) and dist.f_minus[EOS] == pytest.approx(1 / 3)
    assert dist.f_plus[A] == pytest.approx(2 / 4) and dist.f_minus[C] == pytest.approx(1 / 3)


def test_prompt_tokens_are_not_counted(tiny_tokenizer):
    with_prompt = build_distribution([pair("a", "b", prompt="d d d q")], tiny_tokenizer, vocab_size=V)
    assert with_prompt.counts_plus[D] == 0 and with_prompt.counts_plus[A] == 1


def test_ranked_examples_count_best_against_worst(tiny_tokenizer):
    example = PreferenceExample(prompt="q", responses=["a", "b", "c"], rewards=[3.0, 2.0, 1.0])
    dist = build_distribution([example], tiny_tokenizer, vocab_size=V)
    assert dist.delta_f[A] == 1 and dist.delta_f[C] == -1 and dist.delta_f[B] == 0


def test_softmax_and_clip_transforms(tiny_tokenizer):
    delta = build_distribution([pair("a a b", "b c")], tiny_tokenizer, vocab_size=V).delta_f
    # softmax(ΔF / T) with T = 1/6: exponents a 4, b -1, c -3, others 0
    soft = build_distribution([pair("a a b", "b c")], tiny_tokenizer, vocab_size=V, transform="softmax", temperature=1 / 6).q
    z = math.exp(4) + math.exp(-1) + math.exp(-3) + 5
    assert soft[A].item() == pytest.approx(math.exp(4) / z, rel=1e-12)
    assert soft[C].item() == pytest.approx(math.exp(-3) / z, rel=1e-12) and soft[D].item() == pytest.approx(1 / z, rel=1e-12)
    # clip: only ΔF > 0 keeps mass -> all of it on "a"
    clip = preference_distribution(delta, "clip")
    assert clip.tolist() == [0, 0, 1, 0, 0, 0, 0, 0]


def test_invalid_transforms_and_degenerate_data(tiny_tokenizer):
    same_tokens = [pair("a b", "b a")]  # identical token multisets: ΔF = 0 everywhere
    for transform in ("min_shift", "clip"):
        with pytest.raises(PlotprefError, match="gives no mass to any token"):
            build_distribution(same_tokens, tiny_tokenizer, vocab_size=V, transform=transform)
    with pytest.raises(PlotprefError, match="unknown transform 'cube'"):
        build_distribution(same_tokens, tiny_tokenizer, vocab_size=V, transform="cube")
    with pytest.raises(PlotprefError, match="temperature > 0"):
        preference_distribution(torch.zeros(3), "softmax", temperature=0.0)
    with pytest.raises(PlotprefError, match="outside the vocabulary of 5 tokens"):
        build_distribution([pair("q", "a")], tiny_tokenizer, vocab_size=5)


def test_token_counts_excludes_ids():
    assert token_counts([[1, 2, 2], [3, 1]], 5, exclude=[1]).tolist() == [0, 0, 2, 1, 0]


def test_min_shift_invariants_and_diagnostics_against_scipy(tiny_tokenizer):
    from scipy.stats import wasserstein_distance

    examples = [pair("a a b d", "b c"), pair("d d a", "c c b a")]
    dist = build_distribution(examples, tiny_tokenizer, vocab_size=V)
    assert dist.f_plus.sum().item() == pytest.approx(1) and dist.delta_f.sum().item() == pytest.approx(0, abs=1e-15)
    positions = torch.tensor([0.3, 1.0, 2.5, 0.7, 1.9, 3.3, 0.1, 2.2])
    d = diagnostics(dist, positions)
    low = -dist.delta_f.min().item()
    assert d["f_sum"] == pytest.approx(V * low)  # Σ(ΔF − min ΔF) = V·|min ΔF| because Σ ΔF = 0
    assert d["floor_times_vocab"] == pytest.approx(1.0)  # so an unseen token keeps exactly the uniform mass
    assert d["mass_above_floor"] == pytest.approx(dist.delta_f.clamp_min(0).sum().item() / (V * low))
    assert d["tv_to_uniform"] == pytest.approx(0.5 * (dist.q - 1 / V).abs().sum().item())
    assert d["sum_abs_delta_f"] == pytest.approx(dist.delta_f.abs().sum().item())
    oracle = wasserstein_distance(positions.numpy(), positions.numpy(), [1 / V] * V, dist.q.numpy())
    assert d["w1_uniform"] == pytest.approx(oracle, rel=1e-6)
    assert dist.top_tokens(2) == [D, A] and dist.top_tokens(1, most="dispreferred") == [C]  # ΔF: d 3/7, a 3/7 - 1/6, c -1/2


def test_save_load_round_trip_and_mismatches(tiny_tokenizer, tmp_path):
    dist = build_distribution([pair("a a b", "b c")], tiny_tokenizer, vocab_size=V, transform="softmax", temperature=0.5)
    dist.save(tmp_path / "d")
    back = PreferenceDistribution.load(tmp_path / "d", vocab_size=V, tokenizer=tiny_tokenizer)
    for name in ("delta_f", "q", "f_plus", "f_minus", "counts_plus", "counts_minus"):
        assert torch.equal(getattr(back, name), getattr(dist, name)), name
    assert back.metadata == json.loads(json.dumps(dist.metadata))
    assert back.metadata["options"] == {"transform": "softmax", "temperature": 0.5, "exclude_special": True}
    assert back.metadata["tokenizer"]["name_or_path"] == "tiny-words" and back.metadata["tokenizer"]["len"] == len(WORDS)
    with pytest.raises(PlotprefError, match="has 8 tokens .* but the model has 49152 outputs"):
        PreferenceDistribution.load(tmp_path / "d", vocab_size=49152)
    from plotpref.models import load_tokenizer

    with pytest.raises(PlotprefError, match="different tokenizer vocabulary"):
        PreferenceDistribution.load(tmp_path / "d", tokenizer=load_tokenizer())
    with pytest.raises(PlotprefError, match="holds no saved distribution"):
        PreferenceDistribution.load(tmp_path / "nothing")


def test_load_or_build_reuses_the_cache(tiny_tokenizer, tmp_path, monkeypatch):
    import plotpref.distribution as module

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a a b", "rejected": "b c"}) + "\n")
    cache = tmp_path / "cache"
    first = load_or_build_distribution(str(data), tiny_tokenizer, V, cache)
    assert len(list(cache.iterdir())) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(module, "build_distribution", no_build)
    again = load_or_build_distribution(str(data), tiny_tokenizer, V, cache)
    assert torch.equal(again.q, first.q)
    monkeypatch.undo()
    # another option, or other bytes in the file, build a new one
    load_or_build_distribution(str(data), tiny_tokenizer, V, cache, transform="clip")
    data.write_text(json.dumps({"prompt": "q", "chosen": "a d", "rejected": "b c"}) + "\n")
    changed = load_or_build_distribution(str(data), tiny_tokenizer, V, cache)
    assert len(list(cache.iterdir())) == 3 and changed.delta_f[D] > 0


@pytest.mark.slow
def test_cli_end_to_end_on_the_default_model(tmp_path, capsys):
    from plotpref.cli import main

    out = tmp_path / "q"
    assert main(["distribution", "hh-harmless-train", "--lines", "501-800", "--out", str(out), "--top", "5", "--probe", "2"]) == 0
    printed = capsys.readouterr().out
    assert "most preferred tokens" in printed and "most dispreferred tokens" in printed
    assert "share of Q's mass above the floor" in printed and "W1(uniform, Q)" in printed
    dist = PreferenceDistribution.load(out, vocab_size=49152)
    assert dist.q.sum().item() == pytest.approx(1.0) and (dist.q >= 0).all()
    reloaded = load_preference_data("hh-harmless-train", lines=(501, 800))
    assert dist.metadata["dataset"]["examples"] == len(reloaded)
    assert dist.metadata["dataset"]["fingerprint"] == reloaded.fingerprint
    d = dist.metadata["diagnostics"]
    assert 0 < d["w1_uniform"] < d["model_w1_mean"]  # the model's predictions are far from Q; Q is close to uniform
    assert (out / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "q.png").stat().st_size > 20_000

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{oops\n')
    assert main(["distribution", str(bad), "--out", str(tmp_path / "never")]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_empty_dataset_and_no_response_tokens_are_clear_errors(tiny_tokenizer):
    with pytest.raises(PlotprefError, match="no preference examples"):
        build_distribution([], tiny_tokenizer, vocab_size=V)
    # Responses made only of tokens the tokenizer does not know (or special tokens): nothing to count.
    with pytest.raises(PlotprefError, match="response token was counted"):
        build_distribution([pair("", " ")], tiny_tokenizer, vocab_size=V)
