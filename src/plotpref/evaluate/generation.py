"""Batched greedy generation with left padding and the model's chat template, and pair scoring."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

__all__ = ["render_prompt", "generate", "score_pairs"]


def render_prompt(tokenizer, prompt: str | list[dict], prefill: str = "") -> str:
    """The text fed to the model: the chat template with the generation prompt (when the tokenizer
    has one, else the raw prompt), followed by ``prefill``, the start of the assistant turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages)
    return text + prefill


def _token_budget_batches(order: list[int], lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Split ``order`` (indices sorted by decreasing length) into consecutive batches of at most
    ``batch_size`` items whose padded size (items x first item's length) fits ``max_batch_tokens``;
    a single item longer than the budget gets a batch of its own."""
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str | list[dict]], *, prefills: list[str] | None = None, max_new_tokens: int = 64,
             batch_size: int = 16, max_batch_tokens: int = 1024, desc: str = "generating") -> list[str]:
    """Greedy continuations of ``prompts`` (user messages or message lists), decoded without
    special tokens. Prompts are sorted by length so that a batch wastes little padding; the output
    is in input order. With ``prefills``, the assistant turn starts with that text, and the
    returned string is prefill + continuation. A batch holds at most ``batch_size`` prompts and
    at most ``max_batch_tokens`` padded prompt tokens (one long HarmBench context does not pad a
    whole batch to its length).
    """
    from transformers import GenerationConfig

    prefills = prefills or [""] * len(prompts)
    texts = [render_prompt(tokenizer, p, f) for p, f in zip(prompts, prefills, strict=True)]
    # The chat template writes its own BOS (if any); a raw prompt gets the tokenizer's specials.
    add_special = not getattr(tokenizer, "chat_template", None)
    lengths = [len(tokenizer(t, add_special_tokens=add_special)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    batches = _token_budget_batches(order, lengths, batch_size, max_batch_tokens)
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(texts)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for index in tqdm(batches, desc=desc, unit="batch", leave=False):
            batch = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True, add_special_tokens=add_special).to(device)
            generated = model.generate(**batch, generation_config=config)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            for i, text in zip(index, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = prefills[i] + text
    finally:
        tokenizer.padding_side = side
    return outputs


@torch.no_grad()
def score_pairs(model, tokenizer, examples, *, batch_size: int = 16, max_length: int = 512, max_prompt_length: int = 256,
                desc: str = "scoring") -> tuple[torch.Tensor, int]:
    """Summed response log-probabilities and response lengths of the first two responses of each
    example (chosen, rejected), under teacher forcing.

    Returns (scores, skipped): ``scores`` is float64 (K, 4) with columns
    [log π(y+), |y+|, log π(y−), |y−|] for the K examples that survive tokenisation, and
    ``skipped`` counts the examples whose response was truncated away.
    """
    from plotpref.data import PreferenceCollator, tokenize_example
    from plotpref.objectives import sequence_logps

    rows = []
    for example in examples:
        row = tokenize_example(example, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
        if row is not None:
            rows.append({key: value[:2] for key, value in row.items() if key in ("input_ids", "labels")})
    skipped = len(examples) - len(rows)
    collate = PreferenceCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    scores = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", leave=False):
        batch = collate(rows[start:start + batch_size])
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        logps, lengths = sequence_logps(logits.float(), batch["labels"].to(device))
        n = len(rows[start:start + batch_size])
        logps, lengths = logps.double().cpu(), lengths.double().cpu()
        scores.append(torch.stack([logps[:n], lengths[:n], logps[n:2 * n], lengths[n:2 * n]], dim=1))
    return (torch.cat(scores) if scores else torch.zeros(0, 4, dtype=torch.float64)), skipped
