"""Tests for plotpref.objectives: hand-computed values, naive oracles, invariants, TRL parity."""

from __future__ import annotations

import copy
import gzip
import json
import math
import warnings

import pytest
import torch

from plotpref.errors import PlotprefError
from plotpref.objectives import aot, aot_loss, dpo_loss, pro_loss, sequence_logps, sft_loss

# ----------------------------------------------------------------------------- sequence_logps


def _naive_sequence_logps(logits, labels):
    """Position-by-position loop over plain Python floats: the oracle for sequence_logps."""
    sums, counts = [], []
    for b in range(logits.shape[0]):
        total, count = 0.0, 0
        for t in range(1, logits.shape[1]):
            label = int(labels[b, t])
            if label == -100:
                continue
            row = logits[b, t - 1].double().tolist()
            top = max(row)
            log_z = top + math.log(sum(math.exp(v - top) for v in row))
            total += row[label] - log_z
            count += 1
        sums.append(total)
        counts.append(count)
    return sums, counts


def test_sequence_logps_matches_naive_loop():
    torch.manual_seed(0)
    logits = 3 * torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :3] = -100  # prompt
    labels[1, 5:] = -100  # right padding
    labels[1, 2] = -100  # a hole in the middle
    labels[2, 1:] = -100  # no response token at all (labels[:, 0] is never predicted)
    logps, counts = sequence_logps(logits, labels)
    want_logps, want_counts = _naive_sequence_logps(logits, labels)
    assert counts.tolist() == want_counts == [4, 3, 0]
    assert logps.dtype == torch.float32 and counts.dtype == torch.int64
    torch.testing.assert_close(logps, torch.tensor(want_logps, dtype=torch.float32), rtol=1e-6, atol=1e-5)
    assert logps[2].item() == 0.0


def test_sequence_logps_dtypes():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 13, dtype=torch.float64)
    labels = torch.randint(0, 13, (2, 5))
    logps64, _ = sequence_logps(logits, labels)
    assert logps64.dtype == torch.float64
    torch.testing.assert_close(logps64, torch.tensor(_naive_sequence_logps(logits, labels)[0], dtype=torch.float64))
    # bfloat16 logits are scored in float32: identical to upcasting first.
    low = logits.to(torch.bfloat16)
    logps_bf16, _ = sequence_logps(low, labels)
    assert logps_bf16.dtype == torch.float32
    torch.testing.assert_close(logps_bf16, sequence_logps(low.float(), labels)[0], rtol=0, atol=0)


def test_sequence_logps_gradient_is_onehot_minus_softmax():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 9, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 9, (2, 6))
    labels[0, :2] = -100
    logps, _ = sequence_logps(logits, labels)
    logps.sum().backward()
    want = torch.zeros_like(logits)
    probs = logits.detach().softmax(-1)
    for b in range(2):
        for t in range(1, 6):
            if labels[b, t] != -100:
                want[b, t - 1] = -probs[b, t - 1]
                want[b, t - 1, labels[b, t]] += 1
    torch.testing.assert_close(logits.grad, want)


def test_sequence_logps_rejects_bad_inputs():
    logits = torch.randn(2, 5, 7)
    with pytest.raises(PlotprefError, match=r"labels must have shape \(B, T\) = \(2, 5\)"):
        sequence_logps(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(PlotprefError, match=r"logits must have shape \(B, T, V\)"):
        sequence_logps(logits[0], torch.zeros(5, dtype=torch.long))
    with pytest.raises(PlotprefError, match="integer token ids"):
        sequence_logps(logits, torch.zeros(2, 5))
    labels = torch.zeros(2, 5, dtype=torch.long)
    labels[1, 3] = 7
    with pytest.raises(PlotprefError, match=r"label id 7 is outside the vocabulary \[0, 7\)"):
        sequence_logps(logits, labels)
    labels[1, 3] = -5
    with pytest.raises(PlotprefError, match="label id -5"):
        sequence_logps(logits, labels)


# ----------------------------------------------------------------------------- SFT


def test_sft_loss_is_token_mean_nll():
    torch.manual_seed(3)
    logits = torch.randn(3, 8, 10)
    labels = torch.randint(0, 10, (3, 8))
    labels[:, :3] = -100
    labels[0, 6:] = -100
    logps, counts = sequence_logps(logits, labels)
    loss = sft_loss(logps, counts)
    # Oracle: mean of per-token cross-entropies, over every response token of the batch.
    per_token = []
    for b in range(3):
        for t in range(1, 8):
            if labels[b, t] != -100:
                per_token.append(-torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]].item())
    assert loss.shape == ()
    assert loss.item() == pytest.approx(sum(per_token) / len(per_token), rel=1e-6)
    # Equals transformers' own causal-LM cross-entropy on the same batch.
    hf = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 10), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(hf.item(), rel=1e-6)


def test_sft_loss_empty_batch_and_shapes():
    assert sft_loss(torch.zeros(2), torch.zeros(2, dtype=torch.long)).item() == 0.0
    with pytest.raises(PlotprefError, match=r"sft_loss: expected tensors of one shape \(B,\)"):
        sft_loss(torch.zeros(2), torch.zeros(3))


# ----------------------------------------------------------------------------- DPO


def test_dpo_loss_by_hand():
    pc, pr, rc, rr = [-10.0, -4.0], [-12.0, -3.0], [-11.0, -5.0], [-11.5, -2.0]
    beta = 0.5
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        torch.tensor(pc), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr), beta=beta
    )
    for i in range(2):
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-beta * h)), rel=1e-6)
        assert chosen_rewards[i].item() == pytest.approx(beta * (pc[i] - rc[i]))
        assert rejected_rewards[i].item() == pytest.approx(beta * (pr[i] - rr[i]))
    # cDPO: -(1-ε) log σ(βh) - ε log σ(-βh)
    eps = 0.2
    smoothed, _, _ = dpo_loss(
        torch.tensor(pc), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr), beta=beta, label_smoothing=eps
    )
    for i in range(2):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        want = (1 - eps) * math.log(1 + math.exp(-z)) + eps * math.log(1 + math.exp(z))
        assert smoothed[i].item() == pytest.approx(want, rel=1e-6)


def test_dpo_loss_policy_equal_to_reference_is_log2_and_rewards_detached():
    logps = torch.randn(4, requires_grad=True)
    other = torch.randn(4, requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps, other, logps.detach(), other.detach())
    torch.testing.assert_close(losses, torch.full((4,), math.log(2)))
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.mean().backward()
    # d/dlogps of -log σ(β h) at h = 0 is -β/2 per pair, divided by the mean's 4.
    torch.testing.assert_close(logps.grad, torch.full((4,), -0.1 / 2 / 4))
    torch.testing.assert_close(other.grad, torch.full((4,), 0.1 / 2 / 4))


def test_dpo_loss_rejects_bad_arguments():
    x = torch.zeros(3)
    with pytest.raises(PlotprefError, match=r"dpo_loss: expected tensors of one shape.*ref_rejected_logps=\(2,\)"):
        dpo_loss(x, x, x, torch.zeros(2))
    with pytest.raises(PlotprefError, match="beta must be > 0"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(PlotprefError, match=r"label_smoothing .* \[0, 0.5\)"):
        dpo_loss(x, x, x, x, label_smoothing=0.5)


# ----------------------------------------------------------------------------- AOT


def _aot_inputs(seed, batch=5):
    g = torch.Generator().manual_seed(seed)
    return [-20 + 5 * torch.randn(batch, generator=g, dtype=torch.float64) for _ in range(4)]


def test_aot_sorts_then_applies_logistic_loss():
    pc, pr, rc, rr = _aot_inputs(4)
    beta = 0.3
    paired, chosen_rewards, _ = aot_loss(pc, pr, rc, rr, beta=beta)
    unpaired, _, _ = aot_loss(pc, pr, rc, rr, beta=beta, unpaired=True)
    # Oracle with Python's sorted() on plain floats.
    a, b = sorted((pc - pr).tolist()), sorted((rc - rr).tolist())
    want = [math.log(1 + math.exp(-beta * (x - y))) for x, y in zip(a, b)]
    torch.testing.assert_close(paired, torch.tensor(want, dtype=torch.float64))
    a, b = sorted((pc - rc).tolist()), sorted((pr - rr).tolist())
    want = [math.log(1 + math.exp(-beta * (x - y))) for x, y in zip(a, b)]
    torch.testing.assert_close(unpaired, torch.tensor(want, dtype=torch.float64))
    # Rewards are per example (not sorted), as in DPO.
    torch.testing.assert_close(chosen_rewards, beta * (pc - rc))
    # The three losses genuinely differ on this batch, so the comparisons above are not vacuous.
    dpo = dpo_loss(pc, pr, rc, rr, beta=beta)[0]
    assert abs(paired.mean() - dpo.mean()) > 1e-3 and abs(unpaired.mean() - dpo.mean()) > 1e-3


def test_aot_is_permutation_invariant_and_equals_dpo_when_comonotone():
    pc, pr, rc, rr = _aot_inputs(5, batch=6)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    for unpaired in (False, True):
        losses = aot_loss(pc, pr, rc, rr, unpaired=unpaired)[0]
        permuted = aot_loss(pc[perm], pr[perm], rc[perm], rr[perm], unpaired=unpaired)[0]
        torch.testing.assert_close(losses, permuted)
    # If the reference's margins are ranked like the policy's, the rank pairing is the identity
    # pairing, and the paired AOT losses are the DPO losses (in sorted order).
    rr = rc - 0.5 * (pc - pr) + 1.0  # ref margin = 0.5 · policy margin - 1: same order
    order = torch.argsort(pc - pr)
    torch.testing.assert_close(aot_loss(pc, pr, rc, rr)[0], dpo_loss(pc, pr, rc, rr)[0][order])


def test_aot_batch_of_one_is_dpo_and_warns_once(monkeypatch):
    monkeypatch.setattr(aot, "_warned_batch_of_one", False)
    pc, pr, rc, rr = (t[:1] for t in _aot_inputs(6))
    dpo = dpo_loss(pc, pr, rc, rr, beta=0.2)[0]
    with pytest.warns(UserWarning, match="batch of one pair is exactly dpo_loss"):
        paired = aot_loss(pc, pr, rc, rr, beta=0.2)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        unpaired = aot_loss(pc, pr, rc, rr, beta=0.2, unpaired=True)[0]
    torch.testing.assert_close(paired, dpo)
    torch.testing.assert_close(unpaired, dpo)


def test_aot_rejects_bad_shapes():
    with pytest.raises(PlotprefError, match=r"aot_loss: expected tensors of one shape \(B,\)"):
        aot_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1))


# ----------------------------------------------------------------------------- PRO


def test_pro_two_responses_by_hand():
    # Example 0: s1 = -6/3 = -2, s2 = -10/4 = -2.5. Example 1: s1 = -1.5/1, s2 = -0.2/2 = -0.1.
    logps = torch.tensor([[-6.0, -10.0], [-1.5, -0.2]])
    lengths = torch.tensor([[3, 4], [1, 2]])
    losses = pro_loss(logps, lengths)
    want0 = -math.log(math.exp(-2.0) / (math.exp(-2.0) + math.exp(-2.5)))
    want1 = -math.log(math.exp(-1.5) / (math.exp(-1.5) + math.exp(-0.1)))
    assert losses.shape == (2,)
    assert losses[0].item() == pytest.approx(want0, rel=1e-6)  # 0.474077
    assert losses[1].item() == pytest.approx(want1, rel=1e-6)  # 1.620172
    # Temperature τ = 0.5 doubles the score gap.
    sharp = pro_loss(logps, lengths, temperature=0.5)
    assert sharp[0].item() == pytest.approx(math.log(1 + math.exp(-(-2.0 + 2.5) / 0.5)), rel=1e-6)


def test_pro_two_responses_with_reward_gap_by_hand():
    # Official code: z_11 = s_1 (r_1 - r_2), z_12 = s_2 (r_1 - r_2).
    logps = torch.tensor([[-6.0, -10.0]])
    lengths = torch.tensor([[3, 4]])
    rewards = torch.tensor([[0.9, 0.3]])
    gap = 0.9 - 0.3
    want = math.log(math.exp(-2.0 * gap) + math.exp(-2.5 * gap)) - (-2.0 * gap)
    assert pro_loss(logps, lengths, rewards=rewards).item() == pytest.approx(want, rel=1e-6)


def _pro_reference(logps, lengths, rewards=None, temperature=1.0):
    """Straightforward transcription of PRO (reward-gap form after DAMO-ConvAI's compute_loss), in floats.

    The official code's 1e-10 inside the log is left out (plotpref uses a stable log-sum-exp).
    """
    out = []
    for b in range(len(logps)):
        s = [lp / max(n, 1) for lp, n in zip(logps[b], lengths[b])]
        n = len(s)
        total = 0.0
        for k in range(n - 1):
            if rewards is None:
                pos_t, neg_t = 1.0, [1.0] * (n - k - 1)
            else:
                neg_t = [rewards[b][k] - rewards[b][j] for j in range(k + 1, n)]
                pos_t = max(neg_t)
            denominator = math.exp(s[k] * pos_t / temperature) + sum(
                math.exp(s[j] * t / temperature) for j, t in zip(range(k + 1, n), neg_t)
            )
            total += math.log(denominator) - s[k] * pos_t / temperature
        out.append(total)
    return out


@pytest.mark.parametrize("with_rewards", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_pro_three_and_four_responses_match_reference(with_rewards, temperature):
    g = torch.Generator().manual_seed(7)
    for n in (3, 4):
        lengths = torch.randint(1, 30, (5, n), generator=g)
        logps = -5 * lengths * torch.rand(5, n, generator=g, dtype=torch.float64)  # mean log-prob in [-5, 0]
        rewards = None
        if with_rewards:
            rewards = torch.sort(torch.randn(5, n, generator=g, dtype=torch.float64), dim=1, descending=True).values
        got = pro_loss(logps, lengths, rewards=rewards, temperature=temperature)
        want = _pro_reference(
            logps.tolist(), lengths.tolist(), None if rewards is None else rewards.tolist(), temperature
        )
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_pro_gradient_pushes_best_response_up_and_is_finite():
    logps = torch.tensor([[-30.0, -20.0, -25.0]], dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([[10, 10, 10]])
    rewards = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: pro_loss(x, lengths, rewards=rewards), (logps,))
    pro_loss(logps, lengths).sum().backward()
    assert torch.isfinite(logps.grad).all()
    assert logps.grad[0, 0] < 0 < logps.grad[0, 2]  # raise y_1, lower y_n


def test_pro_rejects_bad_arguments():
    with pytest.raises(PlotprefError, match=r"pro_loss: expected tensors of one shape \(B, n\)"):
        pro_loss(torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(PlotprefError, match="rewards="):
        pro_loss(torch.zeros(2, 3), torch.ones(2, 3), rewards=torch.zeros(2))
    with pytest.raises(PlotprefError, match="at least 2 ranked responses"):
        pro_loss(torch.zeros(2, 1), torch.ones(2, 1))
    with pytest.raises(PlotprefError, match="temperature must be > 0"):
        pro_loss(torch.zeros(2, 2), torch.ones(2, 2), temperature=0)


def test_all_objectives_have_finite_gradients_through_sequence_logps():
    torch.manual_seed(8)
    logits = torch.randn(4, 9, 17, requires_grad=True)  # rows 0-1 chosen, 2-3 rejected
    labels = torch.randint(0, 17, (4, 9))
    labels[:, :4] = -100
    logps, counts = sequence_logps(logits, labels)
    ref = logps.detach() + torch.randn(4)
    total = (
        sft_loss(logps[:2], counts[:2])
        + dpo_loss(logps[:2], logps[2:], ref[:2], ref[2:])[0].mean()
        + aot_loss(logps[:2], logps[2:], ref[:2], ref[2:])[0].mean()
        + aot_loss(logps[:2], logps[2:], ref[:2], ref[2:], unpaired=True)[0].mean()
        + pro_loss(logps.view(2, 2).T, counts.view(2, 2).T).mean()
    )
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- TRL parity


def _hh_pairs(count):
    """The first ``count`` HH-RLHF harmless test pairs as one-turn conversations (texts shortened)."""
    from plotpref.assets import asset_path

    marker = "\n\nAssistant:"
    pairs = []
    with gzip.open(asset_path("hh_rlhf/harmless-base_test.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            cut_c, cut_r = row["chosen"].rfind(marker), row["rejected"].rfind(marker)
            prompt = row["chosen"][:cut_c]
            chosen = row["chosen"][cut_c + len(marker) :].strip()
            rejected = row["rejected"][cut_r + len(marker) :].strip()
            if prompt != row["rejected"][:cut_r] or chosen == rejected:
                continue
            question = prompt[prompt.rfind("\n\nHuman:") + len("\n\nHuman:") :].strip()
            pairs.append(
                {
                    "prompt": [{"role": "user", "content": question[:160]}],
                    "chosen": [{"role": "assistant", "content": chosen[:160]}],
                    "rejected": [{"role": "assistant", "content": rejected[:160]}],
                }
            )
            if len(pairs) == count:
                return pairs
    raise AssertionError("not enough HH-RLHF pairs")


def _tokenize_pair(tokenizer, pair):
    """prompt ids, and the response ids of chosen and rejected, from the chat template."""

    def ids(messages, **kwargs):
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])

    prompt = ids(pair["prompt"], add_generation_prompt=True)
    out = [prompt]
    for key in ("chosen", "rejected"):
        full = ids(pair["prompt"] + pair[key])
        assert full[: len(prompt)] == prompt
        out.append(full[len(prompt) :])
    return out


def _plotpref_logps(model, tokenized, pad_id):
    """(chosen, rejected) summed log-probs with plotpref.sequence_logps on a right-padded batch."""
    rows = [(p, c) for p, c, _ in tokenized] + [(p, r) for p, _, r in tokenized]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p) : n] = torch.tensor(c)
        attention_mask[i, :n] = 1
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps, _ = sequence_logps(logits, labels)
    return logps.chunk(2)


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory):
    """A tiny random Llama policy and a differently initialised reference, on real tokenised pairs."""
    pytest.importorskip("trl")
    from transformers import LlamaConfig, LlamaForCausalLM

    from plotpref.models import load_tokenizer

    tokenizer = load_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # Far from uniform outputs, so that log-probs depend on the tokens and not only on the
        # lengths: otherwise the policy's and the reference's margins rank the pairs alike and
        # AOT's sort changes nothing.
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).eval()
    torch.manual_seed(1)
    policy = LlamaForCausalLM(config).eval()
    pairs = _hh_pairs(6)
    # plotpref's side, on token ids built here from the chat template, independently of TRL.
    tokenized = [_tokenize_pair(tokenizer, pair) for pair in pairs]
    logps = _plotpref_logps(policy, tokenized, tokenizer.pad_token_id) + _plotpref_logps(
        reference, tokenized, tokenizer.pad_token_id
    )
    return tokenizer, policy, reference, pairs, tokenized, logps, tmp_path_factory.mktemp("trl")


@pytest.mark.slow  # about 45 s in all on 2 busy cores (TRL's chunked log-prob kernel is slow on CPU)
@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"),
    [("sigmoid", 0.0), ("aot", 0.0), ("aot_unpaired", 0.0), ("aot", 0.1), ("aot_unpaired", 0.1)],
)
def test_losses_match_trl_dpo_trainer(trl_setup, loss_type, label_smoothing):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer, policy, reference, pairs, tokenized, (pc, pr, rc, rr), out_dir = trl_setup
    beta = 0.1
    args = DPOConfig(
        output_dir=str(out_dir),
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL's default is bf16 autocast; compare both sides in float32
        per_device_train_batch_size=len(pairs),
        loss_type=[loss_type],
        beta=beta,
        label_smoothing=label_smoothing,
        save_strategy="no",
    )
    trainer = DPOTrainer(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(reference),
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
    )
    examples = [trainer.train_dataset[i] for i in range(len(pairs))]
    batch = trainer.data_collator(examples)  # TRL's own collator: [chosen..., rejected...], right padded
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    metrics = {key: values[-1] for key, values in trainer._metrics["eval"].items()}

    # Both sides score the same token ids.
    for (prompt, chosen, rejected), example in zip(tokenized, examples):
        assert (prompt, chosen, rejected) == (example["prompt_ids"], example["chosen_ids"], example["rejected_ids"])
    if loss_type == "sigmoid":
        losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=beta)
    else:
        losses, chosen_rewards, rejected_rewards = aot_loss(
            pc, pr, rc, rr, beta=beta, unpaired=loss_type == "aot_unpaired", label_smoothing=label_smoothing
        )

    assert losses.mean().item() == pytest.approx(trl_loss, abs=1e-5)
    assert abs(trl_loss - math.log(2)) > 0.05  # not the trivial policy == reference value
    assert pc.mean().item() == pytest.approx(metrics["logps/chosen"], rel=1e-5)
    assert pr.mean().item() == pytest.approx(metrics["logps/rejected"], rel=1e-5)
    assert chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
    assert rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-5)
    if loss_type != "sigmoid":  # the sort changes the value on this batch: the parity is not DPO's by accident
        dpo = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing)[0]
        assert abs(losses.mean().item() - dpo.mean().item()) > 1e-3
