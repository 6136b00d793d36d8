"""The target preference distribution Q over the vocabulary (paper §3, eq. 4 and 8).

From a preference data set and a tokenizer:

    F⁺(v) = (# of v in chosen responses) / (# counted chosen-response tokens)
    F⁻(v) = (# of v in rejected responses) / (# counted rejected-response tokens)
    ΔF    = F⁺ − F⁻ ∈ [−1, 1]^V                 (DEFT's "difference distribution")
    Q(v)  = f(ΔF)(v) / Σ_u f(ΔF)(u)            (eq. 4, 8)

Only response tokens are counted, tokenised exactly as for training
(:func:`plotpref.data.encode_example`, without truncation); special and chat-template tokens
(e.g. the ``<|im_end|>`` closing each response) are excluded unless ``exclude_special=False``.
For ranked data with more than two responses, F⁺ counts the best response and F⁻ the worst.

f is one of :data:`TRANSFORMS`: ``min_shift`` (the paper's, default) f = ΔF − min ΔF;
``softmax`` Q = softmax(ΔF / T); ``clip`` f = max(ΔF, 0). Since Σ_v ΔF(v) = 0, the min-shift
gives Σ f = V·|min ΔF| and Q = 1/V + ΔF / (V·|min ΔF|): every token never seen keeps exactly
the uniform mass 1/V, and Q is uniform plus a perturbation of total variation
Σ|ΔF| / (2V·|min ΔF|), usually well under 1% (see :func:`diagnostics`, printed by
``plotpref distribution``).

Command line: ``plotpref distribution DATA --model M --out DIR`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from plotpref.data import (
    PreferenceData,
    PreferenceExample,
    dataset_fingerprint,
    encode_example,
    load_preference_data,
    special_token_ids,
)
from plotpref.errors import PlotprefError

logger = logging.getLogger(__name__)

TRANSFORMS = ("min_shift", "softmax", "clip")
TENSORS_FILE = "distribution.safetensors"
METADATA_FILE = "distribution.json"
PLOT_FILE = "q.png"
# Bump when the tokenisation or counting policy changes, so that cached distributions are rebuilt.
_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------
# Pure maths
# --------------------------------------------------------------------------------------------


def token_counts(sequences: Iterable[Sequence[int]], vocab_size: int, *, exclude: Iterable[int] = ()) -> Tensor:
    """Occurrences of each token id over all sequences, ignoring the ids in ``exclude``.

    Args:
        sequences: token id sequences (e.g. every chosen response).
        vocab_size: V, the length of the result.
        exclude: ids that are not counted (special tokens).

    Returns:
        int64 (V,) counts.

    Raises:
        PlotprefError: an id outside [0, V) (the tokenizer is larger than the model's output layer).
    """
    ids = torch.tensor([t for seq in sequences for t in seq], dtype=torch.long)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise PlotprefError(
            f"the tokenizer produced token id {bad}, outside the vocabulary of {vocab_size} tokens: pass vocab_size = the "
            "model's output size (its logits' last dimension) for the model this tokenizer belongs to"
        )
    counts = torch.bincount(ids, minlength=vocab_size)
    excluded = torch.tensor(sorted({int(i) for i in exclude if 0 <= int(i) < vocab_size}), dtype=torch.long)
    counts[excluded] = 0
    return counts


def _unnormalised(delta_f: Tensor, transform: str, temperature: float) -> tuple[Tensor, Tensor]:
    """(f(ΔF), f(0)): the non-negative transform and its value at ΔF = 0 (a token never seen)."""
    zero = torch.zeros((), dtype=delta_f.dtype)
    if transform == "min_shift":
        low = delta_f.min()
        return delta_f - low, zero - low
    if transform == "softmax":
        top = (delta_f / temperature).max()
        return torch.exp(delta_f / temperature - top), torch.exp(zero - top)
    if transform == "clip":
        return delta_f.clamp_min(0), zero
    raise PlotprefError(f"unknown transform {transform!r}: use one of {', '.join(TRANSFORMS)}")


def preference_distribution(delta_f: Tensor, transform: str = "min_shift", temperature: float = 1.0) -> Tensor:
    """Target distribution Q from ΔF (paper eq. 4, 8): Q(v) = f(ΔF)(v) / Σ_u f(ΔF)(u).

    Transforms:
        ``min_shift`` (paper): f(ΔF) = ΔF − min_u ΔF(u). Every token never seen gets the floor
        −min ΔF; the token with the smallest ΔF gets 0.
        ``softmax``: Q = softmax(ΔF / temperature). ΔF is of order 1e-3, so temperatures of that
        order are needed for Q to differ visibly from uniform.
        ``clip``: f(ΔF) = max(ΔF, 0): only tokens more frequent in chosen responses get mass.

    Args:
        delta_f: (V,) F⁺ − F⁻, any float dtype.
        transform: one of :data:`TRANSFORMS`.
        temperature: softmax temperature (> 0); ignored by the other transforms.

    Returns:
        (V,) Q in ``delta_f``'s dtype, non-negative, summing to 1.

    Raises:
        PlotprefError: unknown transform, non-positive temperature, or Σ f = 0 (ΔF identically 0
            for min_shift; no positive ΔF for clip).
    """
    if transform == "softmax" and not temperature > 0:
        raise PlotprefError(f"the softmax transform needs a temperature > 0; got {temperature}")
    f, _ = _unnormalised(delta_f, transform, temperature)
    total = f.sum()
    if not total > 0:
        what = "no token is more frequent in chosen than in rejected responses" if transform == "clip" else "ΔF is 0 for every token"
        raise PlotprefError(
            f"the {transform} transform gives no mass to any token ({what}); check the data (are chosen and rejected "
            "responses different?) or use another transform"
        )
    return f / total


# --------------------------------------------------------------------------------------------
# The distribution object
# --------------------------------------------------------------------------------------------


@dataclass
class PreferenceDistribution:
    """ΔF, Q and the token frequencies behind them, with metadata; all tensors (V,) float64.

    ``counts_plus`` / ``counts_minus`` (int64) are the raw token counts over chosen / rejected
    responses. Save with :meth:`save`, read back with :meth:`load`.
    """

    delta_f: Tensor
    q: Tensor
    f_plus: Tensor
    f_minus: Tensor
    metadata: dict = field(default_factory=dict)
    counts_plus: Tensor | None = None
    counts_minus: Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.q.shape[0])

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``distribution.safetensors`` (the tensors) and ``distribution.json`` (metadata) into out_dir."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in ("delta_f", "q", "f_plus", "f_minus", "counts_plus", "counts_minus")
                   if getattr(self, name) is not None}
        save_file(tensors, out / TENSORS_FILE, metadata={"format": "pt", "vocab_size": str(self.vocab_size)})
        (out / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2, ensure_ascii=False) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, vocab_size: int | None = None, *, tokenizer=None) -> PreferenceDistribution:
        """Read a saved distribution; check it matches the model's vocabulary size and, if given, the tokenizer.

        Raises:
            PlotprefError: missing files, a different ``vocab_size`` or a different tokenizer vocabulary.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / TENSORS_FILE).exists() or not (directory / METADATA_FILE).exists():
            raise PlotprefError(
                f"{directory} holds no saved distribution (expected {TENSORS_FILE} and {METADATA_FILE}): "
                "create one with `plotpref distribution DATA --model M --out DIR`"
            )
        tensors = load_file(directory / TENSORS_FILE)
        try:
            metadata = json.loads((directory / METADATA_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise PlotprefError(f"{directory / METADATA_FILE}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
        dist = cls(metadata=metadata, **tensors)
        built_for = metadata.get("tokenizer", {}).get("name_or_path", "?")
        if vocab_size is not None and dist.vocab_size != vocab_size:
            raise PlotprefError(
                f"the distribution in {directory} has {dist.vocab_size} tokens (built with the tokenizer of {built_for}) but "
                f"the model has {vocab_size} outputs: rebuild it for this model with "
                "`plotpref distribution DATA --model M --out DIR`"
            )
        if tokenizer is not None and metadata.get("tokenizer", {}).get("vocab_sha256") != tokenizer_identity(tokenizer)["vocab_sha256"]:
            raise PlotprefError(
                f"the distribution in {directory} was built with a different tokenizer vocabulary ({built_for}): rebuild it "
                "with this model's tokenizer (`plotpref distribution DATA --model M --out DIR`)"
            )
        return dist

    def top_tokens(self, k: int = 20, *, most: str = "preferred") -> list[int]:
        """Ids of the k tokens with the largest (``most="preferred"``) or smallest (``"dispreferred"``) ΔF."""
        if most not in ("preferred", "dispreferred"):
            raise PlotprefError(f"most must be 'preferred' or 'dispreferred'; got {most!r}")
        order = torch.argsort(self.delta_f, descending=most == "preferred", stable=True)
        return order[: min(k, self.vocab_size)].tolist()


def tokenizer_identity(tokenizer) -> dict:
    """name_or_path, len and sha256 of the vocabulary (token -> id) and of the chat template."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    template = getattr(tokenizer, "chat_template", None) or ""
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "len": len(tokenizer),
        "vocab_sha256": hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest(),
        "chat_template_sha256": hashlib.sha256(template.encode() if isinstance(template, str) else json.dumps(template).encode()).hexdigest(),
    }


def _examples_fingerprint(examples: Sequence[PreferenceExample]) -> str:
    if isinstance(examples, PreferenceData) and examples.fingerprint:
        return examples.fingerprint
    return hashlib.sha256(json.dumps([dataclasses.asdict(e) for e in examples], ensure_ascii=False).encode()).hexdigest()


def build_distribution(
    examples: Sequence[PreferenceExample],
    tokenizer,
    *,
    vocab_size: int,
    transform: str = "min_shift",
    temperature: float = 1.0,
    exclude_special: bool = True,
) -> PreferenceDistribution:
    """F⁺, F⁻, ΔF and Q (see the module docstring) from examples and the model's tokenizer.

    Args:
        examples: preference examples (e.g. from :func:`plotpref.data.load_preference_data`);
            ``responses[0]`` is counted as chosen and ``responses[-1]`` as rejected.
        tokenizer: the model's tokenizer; responses are tokenised as for training.
        vocab_size: V, the model's output size (may exceed ``len(tokenizer)``).
        transform, temperature: see :func:`preference_distribution`.
        exclude_special: do not count special tokens (the end-of-turn token closing each response).

    Returns:
        A :class:`PreferenceDistribution` with float64 tensors.
    """
    from tqdm.auto import tqdm

    if transform not in TRANSFORMS:
        raise PlotprefError(f"unknown transform {transform!r}: use one of {', '.join(TRANSFORMS)}")
    if not examples:
        raise PlotprefError("no preference examples to build the distribution from")
    chosen, rejected = [], []
    for example in tqdm(examples, desc="counting tokens", unit="ex", disable=len(examples) < 500):
        _, responses = encode_example(example, tokenizer)
        chosen.append(responses[0])
        rejected.append(responses[-1])
    excluded = sorted(special_token_ids(tokenizer)) if exclude_special else []
    counts_plus = token_counts(chosen, vocab_size, exclude=excluded)
    counts_minus = token_counts(rejected, vocab_size, exclude=excluded)
    n_plus, n_minus = int(counts_plus.sum()), int(counts_minus.sum())
    if n_plus == 0 or n_minus == 0:
        raise PlotprefError(f"no {'chosen' if n_plus == 0 else 'rejected'} response token was counted: are all responses empty or special tokens?")
    f_plus = counts_plus.double() / n_plus
    f_minus = counts_minus.double() / n_minus
    delta_f = f_plus - f_minus
    q = preference_distribution(delta_f, transform, temperature)
    metadata = {
        "plotpref_distribution_version": _CACHE_VERSION,
        "vocab_size": vocab_size,
        "tokenizer": tokenizer_identity(tokenizer),
        "dataset": {
            "source": getattr(examples, "source", ""),
            "fingerprint": _examples_fingerprint(examples),
            "examples": len(examples),
            "skipped": dict(getattr(examples, "skipped", {})),
        },
        "options": {"transform": transform, "temperature": temperature, "exclude_special": exclude_special},
        "excluded_token_ids": excluded,
        "tokens": {"chosen": n_plus, "rejected": n_minus, "seen": int(((counts_plus + counts_minus) > 0).sum())},
    }
    dist = PreferenceDistribution(delta_f, q, f_plus, f_minus, metadata, counts_plus, counts_minus)
    dist.metadata["diagnostics"] = diagnostics(dist)
    return dist


def diagnostics(dist: PreferenceDistribution, positions: Tensor | None = None) -> dict:
    """How far Q is from uniform (DESIGN.md §1.3): what the PLOT term really pulls towards.

    Keys: ``delta_f_min``/``delta_f_max``, ``sum_abs_delta_f`` (the preference signal Σ|ΔF|),
    ``f_sum`` (Σ f(ΔF), e.g. V·|min ΔF| for the min-shift), ``floor`` (Q of a token never seen),
    ``floor_times_vocab`` (the floor relative to uniform), ``mass_above_floor`` (Σ max(Q − floor,
    0)), ``tv_to_uniform`` (½ Σ|Q − 1/V|), ``tokens_seen``; with ``positions`` (the token
    positions x_v) also ``w1_uniform``, W1(uniform, Q) on that support (paper eq. 14).
    """
    options = dist.metadata.get("options", {})
    f, f_zero = _unnormalised(dist.delta_f.double(), options.get("transform", "min_shift"), options.get("temperature", 1.0))
    q = dist.q.double()
    V = dist.vocab_size
    floor = float(f_zero / f.sum())
    out = {
        "delta_f_min": float(dist.delta_f.min()),
        "delta_f_max": float(dist.delta_f.max()),
        "sum_abs_delta_f": float(dist.delta_f.abs().sum()),
        "f_sum": float(f.sum()),
        "floor": floor,
        "floor_times_vocab": floor * V,
        "mass_above_floor": float((q - floor).clamp_min(0).sum()),
        "tv_to_uniform": 0.5 * float((q - 1.0 / V).abs().sum()),
        "tokens_seen": int(((dist.f_plus > 0) | (dist.f_minus > 0)).sum()),
    }
    if positions is not None:
        from plotpref.ot import wasserstein_1d

        uniform_logits = torch.zeros(1, V, dtype=torch.float64)
        out["w1_uniform"] = float(wasserstein_1d(uniform_logits, q, positions.double())[0])
    return out


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def load_or_build_distribution(
    source: str | os.PathLike | PreferenceData,
    tokenizer,
    vocab_size: int,
    cache_dir: str | os.PathLike,
    *,
    lines: tuple[int, int] | None = None,
    format: str = "auto",
    transform: str = "min_shift",
    temperature: float = 1.0,
    exclude_special: bool = True,
) -> PreferenceDistribution:
    """The distribution for (data, tokenizer, vocab_size, options), built once and cached under ``cache_dir``.

    The cache key is the sha256 of the data set's fingerprint (file bytes + lines + format), the
    tokenizer's identity (vocabulary and chat template), ``vocab_size``, the options and the
    counting policy's version; a change in any of them builds a new distribution.
    ``source`` is what :func:`plotpref.data.load_preference_data` accepts, or its result.
    """
    if isinstance(source, PreferenceData):
        data_fp = source.fingerprint or _examples_fingerprint(source)
    else:
        data_fp = dataset_fingerprint(source, lines=lines, format=format)
    options = {"transform": transform, "temperature": temperature, "exclude_special": exclude_special}
    key_material = {"data": data_fp, "tokenizer": tokenizer_identity(tokenizer), "vocab_size": vocab_size,
                    "options": options, "version": _CACHE_VERSION}
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()
    target = Path(cache_dir) / key[:20]
    if (target / METADATA_FILE).exists() and (target / TENSORS_FILE).exists():
        dist = PreferenceDistribution.load(target, vocab_size=vocab_size)
        if dist.metadata.get("cache_key") == key:
            logger.info("preference distribution loaded from the cache: %s", target)
            return dist
    examples = source if isinstance(source, PreferenceData) else load_preference_data(source, lines=lines, format=format)
    dist = build_distribution(examples, tokenizer, vocab_size=vocab_size, transform=transform, temperature=temperature,
                              exclude_special=exclude_special)
    dist.metadata["cache_key"] = key
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        dist.save(tmp)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process stored it first
            if not (target / METADATA_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("preference distribution built and cached: %s", target)
    return dist


# --------------------------------------------------------------------------------------------
# Inspection: tables, W1 of the model's own predictions, plot
# --------------------------------------------------------------------------------------------


def _token_text(tokenizer, token_id: int) -> str:
    if token_id >= len(tokenizer):
        return f"<id {token_id}>"
    return repr(tokenizer.decode([token_id]))


def format_top_tokens(dist: PreferenceDistribution, tokenizer, k: int = 15) -> str:
    """Two tables: the k most preferred and the k most dispreferred tokens (decoded, ΔF, Q·V, counts)."""
    lines = []
    for most in ("preferred", "dispreferred"):
        lines.append(f"most {most} tokens (ΔF = F⁺ − F⁻; Q·V = Q relative to uniform; counts in chosen / rejected):")
        lines.append(f"  {'id':>6}  {'token':<22} {'ΔF':>10} {'Q·V':>8} {'chosen':>7} {'rejected':>8}")
        for i in dist.top_tokens(k, most=most):
            n_plus = int(dist.counts_plus[i]) if dist.counts_plus is not None else float("nan")
            n_minus = int(dist.counts_minus[i]) if dist.counts_minus is not None else float("nan")
            lines.append(
                f"  {i:>6}  {_token_text(tokenizer, i):<22} {float(dist.delta_f[i]):>+10.5f} "
                f"{float(dist.q[i]) * dist.vocab_size:>8.3f} {n_plus:>7} {n_minus:>8}"
            )
        lines.append("")
    return "\n".join(lines)


def model_w1_to_q(model, tokenizer, examples: Sequence[PreferenceExample], dist: PreferenceDistribution, positions: Tensor,
                  *, max_length: int = 512, max_prompt_length: int = 256) -> tuple[float, int]:
    """Mean W1(p_t, Q) over the chosen-response positions of ``examples`` under ``model`` (the PLOT
    term's value before training), and the number of positions."""
    from plotpref.data import PreferenceCollator, tokenize_example
    from plotpref.ot import make_distance

    rows = [r for r in (tokenize_example(e, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length) for e in examples) if r]
    if not rows:
        return float("nan"), 0
    batch = PreferenceCollator(tokenizer.pad_token_id)([{"input_ids": r["input_ids"][:1], "labels": r["labels"][:1]} for r in rows])
    distance = make_distance("w1", support=positions, target=dist.q.float())
    values = []
    with torch.no_grad():
        for start in range(0, len(rows), 4):
            ids, mask, labels = (batch[k][start : start + 4] for k in ("input_ids", "attention_mask", "labels"))
            logits = model(input_ids=ids, attention_mask=mask).logits
            predicting = labels[:, 1:] != -100  # logits[t] predicts labels[t + 1]
            values.append(distance(logits[:, :-1][predicting].float()))
    values = torch.cat(values)
    return float(values.mean()), int(values.numel())


def plot_distribution(dist: PreferenceDistribution, positions: Tensor, tokenizer, path: str | os.PathLike, *, annotate: int = 8) -> Path:
    """PNG of Q along the embedding-norm axis: Q(v)·V against x_v (uniform = 1, the floor dashed),
    the top tokens annotated; below, the CDF of Q minus the uniform CDF along x, whose area is W1(uniform, Q)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = positions.double().cpu()
    q = dist.q.double().cpu()
    V = dist.vocab_size
    d = dist.metadata.get("diagnostics") or diagnostics(dist, positions)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8.5), height_ratios=[3, 2], constrained_layout=True)
    seen = (dist.f_plus > 0) | (dist.f_minus > 0)
    up, down = seen & (dist.delta_f > 0), seen & (dist.delta_f <= 0)
    top.scatter(x[~seen], (q * V)[~seen], s=2, c="0.7", label=f"never seen ({int((~seen).sum()):,} tokens)", rasterized=True)
    top.scatter(x[up], (q * V)[up], s=5, c="tab:blue", label=f"ΔF > 0: more frequent in chosen ({int(up.sum()):,})", rasterized=True)
    top.scatter(x[down], (q * V)[down], s=5, c="tab:red", label=f"ΔF ≤ 0, seen ({int(down.sum()):,})", rasterized=True)
    floor_is_uniform = abs(d["floor_times_vocab"] - 1.0) <= 1e-6
    top.axhline(1.0, color="k", lw=1, label="uniform (Q·V = 1)" + (" = floor of never-seen tokens" if floor_is_uniform else ""))
    if not floor_is_uniform:
        top.axhline(d["floor_times_vocab"], color="0.4", lw=1, ls="--", label=f"floor of never-seen tokens (Q·V = {d['floor_times_vocab']:.3g})")
    for most, colour, sign in (("preferred", "tab:blue", 1), ("dispreferred", "tab:red", -1)):
        for rank, i in enumerate(dist.top_tokens(annotate, most=most)):
            dx = (-1) ** rank * (18 + 14 * (rank // 2))
            dy = sign * (10 + 9 * (rank % 4))
            top.annotate(_token_text(tokenizer, i), (float(x[i]), float(q[i] * V)), xytext=(dx, dy), textcoords="offset points",
                         fontsize=8, color=colour, ha="center", va="bottom" if sign > 0 else "top",
                         arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5})
    low, high = float((q * V).min()), float((q * V).max())
    top.set_ylim(low - 0.15 * (high - low) - 0.05, high + 0.2 * (high - low) + 0.05)
    opts = dist.metadata.get("options", {})
    top.set_title(
        f"Target preference distribution Q ({opts.get('transform', '?')}) over {V:,} tokens; "
        f"mass above the floor {100 * d['mass_above_floor']:.3f}%, TV to uniform {100 * d['tv_to_uniform']:.3f}%"
    )
    top.set_xlabel("token position x_v = ||E_v||₂ (embedding norm)")
    top.set_ylabel("Q(v) · V  (1 = uniform)")
    top.legend(loc="upper right", fontsize=8, markerscale=2.5)
    order = torch.argsort(x, stable=True)
    gap = torch.cumsum(q[order], 0) - torch.arange(1, V + 1, dtype=torch.float64) / V
    bottom.plot(x[order], gap, lw=1, color="tab:purple")
    bottom.axhline(0, color="k", lw=0.8)
    w1 = d.get("w1_uniform")
    bottom.set_title("CDF of Q minus CDF of uniform along x" + (f": the area is W1(uniform, Q) = {w1:.3g}" if w1 is not None else ""))
    bottom.set_xlabel("token position x_v")
    bottom.set_ylabel("F_Q(x) − F_uniform(x)")
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_lines(text: str | None) -> tuple[int, int] | None:
    """``"A-B"`` -> (A, B), 1-based inclusive."""
    if text is None:
        return None
    first, sep, last = text.partition("-")
    try:
        if not sep:
            raise ValueError
        lines = (int(first), int(last))
    except ValueError:
        raise PlotprefError(f"--lines must look like A-B (1-based, inclusive), e.g. 501-2312; got {text!r}") from None
    if not 1 <= lines[0] <= lines[1]:
        raise PlotprefError(f"--lines {text}: need 1 <= A <= B")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plotpref distribution",
        description="Build the target preference distribution Q (paper eq. 4, 8) from preference data, save it, "
        "and show what it contains: top tokens, how far Q is from uniform, and a plot along the embedding-norm axis.",
    )
    parser.add_argument("data", help="a .jsonl/.json/.csv/.parquet file (optionally .gz), a built-in name "
                        "(hh-harmless-train, hh-harmless-eval, hh-helpful-eval) or a datasets hub name")
    parser.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--out", required=True, help="output folder: distribution.safetensors, distribution.json, q.png")
    parser.add_argument("--lines", default=None, help="use only lines A-B of the data (1-based, inclusive)")
    parser.add_argument("--format", default="auto", help="file format: auto (from the extension), jsonl, json, csv, parquet")
    parser.add_argument("--transform", default="min_shift", choices=TRANSFORMS, help="f in Q = f(ΔF)/Σf (default: the paper's min_shift)")
    parser.add_argument("--temperature", type=float, default=1.0, help="temperature of the softmax transform")
    parser.add_argument("--keep-special", action="store_true", help="also count special tokens (e.g. the end-of-turn token)")
    parser.add_argument("--embedding", default="input", choices=("input", "output"), help="embedding table giving x_v")
    parser.add_argument("--top", type=int, default=15, help="how many most (dis)preferred tokens to list")
    parser.add_argument("--probe", type=int, default=8, help="examples on which to measure the model's W1(p_t, Q) (0: skip)")
    args = parser.parse_args(argv)

    from plotpref.models import load_model_and_tokenizer
    from plotpref.ot import token_positions

    examples = load_preference_data(args.data, lines=parse_lines(args.lines), format=args.format)
    model, tokenizer = load_model_and_tokenizer(args.model)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    dist = build_distribution(examples, tokenizer, vocab_size=vocab_size, transform=args.transform,
                              temperature=args.temperature, exclude_special=not args.keep_special)
    positions = token_positions(model, source=args.embedding)
    d = diagnostics(dist, positions)
    if args.probe > 0:
        d["model_w1_mean"], d["model_w1_positions"] = model_w1_to_q(model, tokenizer, examples[: args.probe], dist, positions)
    dist.metadata["diagnostics"] = d
    dist.metadata["model"] = args.model or "default"
    out = dist.save(args.out)
    png = plot_distribution(dist, positions, tokenizer, out / PLOT_FILE)

    t = dist.metadata["tokens"]
    print(f"data: {args.data}: {len(examples)} examples ({sum(examples.skipped.values())} skipped: {dict(examples.skipped)})")
    print(f"tokens counted: {t['chosen']:,} chosen, {t['rejected']:,} rejected; {t['seen']:,} distinct tokens seen of V = {vocab_size:,}\n")
    print(format_top_tokens(dist, tokenizer, args.top))
    print(f"ΔF range [{d['delta_f_min']:+.4f}, {d['delta_f_max']:+.4f}]; preference signal Σ|ΔF| = {d['sum_abs_delta_f']:.4f}")
    print(f"Q = f(ΔF)/Σf with f = {args.transform}: Σf = {d['f_sum']:.4g}; floor (Q of a token never seen) = "
          f"{d['floor']:.4g} = {d['floor_times_vocab']:.4f} × uniform")
    print(f"share of Q's mass above the floor: {100 * d['mass_above_floor']:.4f}%; TV(Q, uniform) = {100 * d['tv_to_uniform']:.4f}% "
          f"(Q is {100 * (1 - d['tv_to_uniform']):.2f}% uniform)")
    print(f"W1(uniform, Q) on x_v = ||E_v||_2 ({args.embedding} embeddings): {d['w1_uniform']:.3g}")
    if "model_w1_mean" in d:
        print(f"W1(p_t, Q) of the model's own predictions: mean {d['model_w1_mean']:.3g} over {d['model_w1_positions']} "
              f"chosen-response positions of {min(args.probe, len(examples))} examples")
    print(f"\nwrote {out / TENSORS_FILE}, {out / METADATA_FILE}, {png}")
    return 0
