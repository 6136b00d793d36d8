"""The metrics of one model: harmlessness under attacks, over-refusal, preference, reward,
GSM8K and perplexity. Each function takes a loaded model and returns a JSON-able dict with ``n``.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from plotpref.assets import asset_path
from plotpref.errors import PlotprefError
from plotpref.evaluate.attacks import Attack, TestCase
from plotpref.evaluate.generation import generate
from plotpref.evaluate.judges import Judge, KeywordJudge
from plotpref.evaluate.metrics import extract_final_number, numbers_equal

__all__ = ["harmlessness", "over_refusal", "preference_scores", "preference_metrics", "perplexity", "gsm8k",
           "reward_scores", "load_benign_prompts", "load_gsm8k", "GSM8K_PROMPT"]

EVAL_LINES = 500
"""HH-RLHF evaluation pairs are lines 1-500 of the *-base test files (the rest trains)."""


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def harmlessness(model, tokenizer, attacks: list[Attack], static_cases: dict[str, list[TestCase]], behaviors, judge: Judge,
                 *, max_new_tokens: int, batch_size: int, records: list[dict], max_batch_tokens: int = 1024) -> dict:
    """Attack success rate (ASR = fraction judged jailbroken) per attack, per category and source.

    ``static_cases`` holds the cases of attacks that do not depend on the model; white-box attacks
    (``needs_model``) are run here against this model. Every case is appended to ``records``.
    """
    out = {}
    for attack in attacks:
        cases = static_cases.get(attack.name)
        if cases is None:
            cases = attack.test_cases(behaviors, model, tokenizer)
        generations = generate(model, tokenizer, [c.prompt for c in cases], prefills=[c.prefill for c in cases],
                               max_new_tokens=max_new_tokens, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                               desc=f"attack {attack.name}")
        verdicts = judge.judge([c.behavior for c in cases], generations)
        by_category, by_source = defaultdict(list), defaultdict(list)
        for case, generation, jailbroken in zip(cases, generations, verdicts):
            by_category[case.behavior.category].append(jailbroken)
            by_source[case.behavior.source].append(jailbroken)
            records.append({"metric": "harmlessness", "attack": attack.name, "behavior_id": case.behavior.id,
                            "category": case.behavior.category, "prompt": case.prompt, "prefill": case.prefill,
                            "output": generation, "jailbroken": jailbroken, **case.info})
        out[attack.name] = {"asr": _rate(verdicts), "n": len(verdicts), "jailbroken": sum(verdicts),
                            "by_category": {k: {"asr": _rate(v), "n": len(v)} for k, v in sorted(by_category.items())},
                            "by_source": {k: {"asr": _rate(v), "n": len(v)} for k, v in sorted(by_source.items())},
                            "attack": attack.describe()}
        if attack.name == "gcg":
            losses = [c.info["best_loss"] for c in cases]
            out[attack.name]["gcg_best_loss_mean"] = sum(losses) / len(losses) if losses else None
    return {"attacks": out, "judge": judge.name}


def _first_human_turn(transcript: str) -> str:
    return transcript.split("\n\nHuman:", 1)[1].split("\n\nAssistant:", 1)[0].strip()


def load_benign_prompts(n: int | None) -> list[str]:
    """First Human turn of helpful-base test lines 1..min(n, 500) (the evaluation lines)."""
    prompts = []
    with gzip.open(asset_path("hh_rlhf/helpful-base_test.jsonl.gz"), "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if number > EVAL_LINES or (n is not None and len(prompts) >= n):
                break
            prompts.append(_first_human_turn(json.loads(line)["chosen"]))
    return prompts


def over_refusal(model, tokenizer, prompts: list[str], refusal_judge: KeywordJudge, *, max_new_tokens: int, batch_size: int,
                 records: list[dict], max_batch_tokens: int = 1024) -> tuple[dict, list[str]]:
    """Fraction of benign prompts refused (a refusal string occurs in the reply); returns the replies too."""
    generations = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           max_batch_tokens=max_batch_tokens, desc="benign prompts")
    refused = [refusal_judge.is_refusal(g) for g in generations]
    records += [{"metric": "over_refusal", "prompt": p, "output": g, "refused": r} for p, g, r in zip(prompts, generations, refused)]
    return {"refusal_rate": _rate(refused), "n": len(prompts), "refused": sum(refused),
            "judge": "keyword refusal strings (refusal = one occurs)"}, generations


def preference_scores(model, tokenizer, examples, *, batch_size: int, max_length: int, max_prompt_length: int, desc: str):
    from plotpref.evaluate.generation import score_pairs

    return score_pairs(model, tokenizer, examples, batch_size=batch_size, max_length=max_length,
                       max_prompt_length=max_prompt_length, desc=desc)


def preference_metrics(scores: torch.Tensor, reference: torch.Tensor | None, skipped: int, comparison: str) -> dict:
    """Held-out preference accuracy and mean margin from per-pair scores.

    ``scores``/``reference``: (K, 4) as from :func:`~plotpref.evaluate.generation.score_pairs`.
    Always reported, with r(y) = log π(y), the summed log-probability::

        logp_accuracy = mean[ r(y+) > r(y−) ],   logp_margin = mean[ r(y+) − r(y−) ]

    With a reference, also with the implicit (DPO) reward r(y) = log π(y) − log π_ref(y), β = 1
    (``implicit_accuracy``, ``implicit_margin``, in nats). ``accuracy`` and ``mean_margin`` are the
    headline pair: the implicit ones when there is a reference, else the log-prob ones, as
    ``comparison`` says. Ties count as wrong.
    """
    def accuracy_margin(chosen, rejected):
        margin = chosen - rejected
        if not len(margin):
            return None, None
        return float((margin > 0).double().mean()), float(margin.mean())

    result = {"n": len(scores), "skipped": skipped, "comparison": comparison}
    result["logp_accuracy"], result["logp_margin"] = accuracy_margin(scores[:, 0], scores[:, 2])
    result["implicit_accuracy"] = result["implicit_margin"] = None
    if reference is not None:
        if reference.shape != scores.shape:
            raise PlotprefError(f"reference scores {tuple(reference.shape)} do not match the model's {tuple(scores.shape)}: "
                                "the reference model must use the same tokenizer")
        result["implicit_accuracy"], result["implicit_margin"] = accuracy_margin(scores[:, 0] - reference[:, 0], scores[:, 2] - reference[:, 2])
    kind = "implicit" if reference is not None else "logp"
    result["accuracy"], result["mean_margin"] = result[f"{kind}_accuracy"], result[f"{kind}_margin"]
    return result


def perplexity(scores: torch.Tensor, skipped: int) -> dict:
    """exp(− Σ log π(y+) / Σ |y+|) over the chosen responses (token-level perplexity)."""
    tokens = float(scores[:, 1].sum())
    value = math.exp(-float(scores[:, 0].sum()) / tokens) if tokens else None
    return {"perplexity": value, "n": len(scores), "tokens": int(tokens), "skipped": skipped}


GSM8K_PROMPT = ("Solve the following math problem step by step. Write the final answer as a number on the "
                "last line, in the form \"#### <number>\".\n\nQuestion: {question}")


@dataclass
class GSM8KItem:
    question: str
    answer: float


def load_gsm8k(n: int | None) -> list[GSM8KItem]:
    """The first ``n`` GSM8K test questions with their reference numbers (the "#### N" line)."""
    items = []
    with open(asset_path("gsm8k/test.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            if n is not None and len(items) >= n:
                break
            record = json.loads(line)
            items.append(GSM8KItem(record["question"], float(record["answer"].split("#### ")[-1].strip().replace(",", ""))))
    return items


def gsm8k(model, tokenizer, items: list[GSM8KItem], *, max_new_tokens: int, batch_size: int, records: list[dict],
          max_batch_tokens: int = 1024) -> dict:
    """Exact-match accuracy of the extracted final number (greedy, zero-shot, instruction prompt)."""
    outputs = generate(model, tokenizer, [GSM8K_PROMPT.format(question=i.question) for i in items],
                       max_new_tokens=max_new_tokens, batch_size=batch_size, max_batch_tokens=max_batch_tokens, desc="gsm8k")
    correct, unparsed = [], 0
    for item, output in zip(items, outputs):
        predicted = extract_final_number(output)
        unparsed += predicted is None
        correct.append(numbers_equal(predicted, item.answer))
        records.append({"metric": "gsm8k", "question": item.question, "output": output, "predicted": predicted,
                        "answer": item.answer, "correct": correct[-1]})
    return {"accuracy": _rate(correct), "n": len(items), "correct": sum(correct), "no_number": unparsed,
            "max_new_tokens": max_new_tokens, "extraction": "number after the last '####', else the last number; commas stripped"}


@torch.no_grad()
def reward_scores(reward_model, reward_tokenizer, prompts: list[str], responses: list[str], *, batch_size: int) -> list[float]:
    """Scalar reward of each (prompt, response) pair: the single logit of a 1-label sequence classifier.

    The pair is written with the reward model's chat template when it has one, else in HH-RLHF's
    format "\\n\\nHuman: {prompt}\\n\\nAssistant: {response}".
    """
    if reward_model.config.num_labels != 1:
        raise PlotprefError(f"reward_model has {reward_model.config.num_labels} labels; a reward model has exactly one output (num_labels=1)")
    if getattr(reward_tokenizer, "chat_template", None):
        texts = [reward_tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
                 for p, r in zip(prompts, responses)]
    else:
        texts = [f"\n\nHuman: {p}\n\nAssistant: {r}" for p, r in zip(prompts, responses)]
    device = next(reward_model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = reward_tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                                 max_length=1024, add_special_tokens=not getattr(reward_tokenizer, "chat_template", None)).to(device)
        scores += reward_model(**batch).logits[:, 0].float().tolist()
    return scores

