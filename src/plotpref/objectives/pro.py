"""Preference Ranking Optimization (PRO): a listwise softmax over length-normalised scores.

Song et al., "Preference Ranking Optimization for Human Alignment" (AAAI 2024,
https://arxiv.org/abs/2306.17492). The official code is AlibabaResearch/DAMO-ConvAI,
``PRO/train/utils/process_manager.py``, ``ProcessManager.compute_loss``; this module implements
its ranking term. Its SFT term, added by the trainer, is there
``sft_weight · (n-1)² · mean_b(-log π(y_sft))`` with the log-probability *summed* over the
response (not token-averaged) and ``y_sft`` the best response.
"""

from __future__ import annotations

import torch

from plotpref.errors import PlotprefError
from plotpref.objectives.common import check_same_shape


def pro_loss(
    logps: torch.Tensor,
    lengths: torch.Tensor,
    *,
    rewards: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    r"""Ranking part of the PRO loss, one value per example.

    Responses y_1 ≻ y_2 ≻ … ≻ y_n are ranked best first; each is scored by its length-normalised
    log-probability s_i = log π(y_i|x) / |y_i|. PRO applies a softmax cross-entropy at every rank
    k: y_k must win against itself and every worse response::

        L = Σ_{k=1}^{n-1} -log( exp(z_kk) / Σ_{j=k}^{n} exp(z_kj) )
          = Σ_{k=1}^{n-1} [ logsumexp_{j≥k} z_kj - z_kk ]

    Without rewards, z_kj = s_j / τ (τ = ``temperature``); for n = 2 this is
    -log σ((s_1 - s_2)/τ). With a reward r_i per response (a reward model's score, higher is
    better, non-increasing along the ranking), the official code sharpens each comparison by the
    reward gap, its "dynamic temperature"::

        z_kj = s_j · (r_k - r_j) / τ            for j > k
        z_kk = s_k · max_{j>k} (r_k - r_j) / τ

    (the official code has τ = 1 and adds 1e-10 inside the log; here the log-sum-exp is computed
    stably instead, which differs by less than 1e-10 relative). A tie r_k = r_j makes that
    comparison flat, as in the official code.

    Args:
        logps (torch.Tensor): summed log π(y_i|x), shape (B, n), n ≥ 2, column 0 the best
            response (:func:`~plotpref.objectives.sequence_logps`, reshaped).
        lengths (torch.Tensor): response token counts |y_i|, shape (B, n); a count of 0 is read as 1.
        rewards (torch.Tensor | None): r_i, shape (B, n), or None for the reward-free loss.
        temperature (float): τ > 0.

    Returns:
        torch.Tensor: losses, shape (B,), in the dtype of ``logps`` (the training loss is their
        mean; the trainer adds ``sft_weight`` × the SFT term on y_1).

    Raises:
        PlotprefError: if the shapes disagree, n < 2 or τ ≤ 0.
    """
    tensors = {"logps": logps, "lengths": lengths}
    if rewards is not None:
        tensors["rewards"] = rewards
    check_same_shape("pro_loss", 2, **tensors)
    n = logps.shape[1]
    if n < 2:
        raise PlotprefError(f"pro_loss: needs at least 2 ranked responses per example, got shape {tuple(logps.shape)}")
    if not temperature > 0:
        raise PlotprefError(f"pro_loss: temperature must be > 0, got {temperature}")

    scores = logps / lengths.to(logps.dtype).clamp(min=1)  # s_i, (B, n)
    rank = torch.arange(n - 1, device=logps.device).unsqueeze(1)  # k, (n-1, 1)
    candidate = torch.arange(n, device=logps.device).unsqueeze(0)  # j, (1, n)
    worse, itself = candidate > rank, candidate == rank  # (n-1, n)

    if rewards is None:
        weights = torch.ones(n - 1, n, dtype=logps.dtype, device=logps.device)
    else:
        rewards = rewards.to(logps.dtype)
        gaps = rewards[:, : n - 1, None] - rewards[:, None, :]  # r_k - r_j, (B, n-1, n)
        top_gap = gaps.masked_fill(~worse, float("-inf")).amax(-1, keepdim=True)  # max_{j>k}, (B, n-1, 1)
        weights = torch.where(itself, top_gap, gaps)
    z = (scores[:, None, :] * weights / temperature).masked_fill(candidate < rank, float("-inf"))  # (B, n-1, n)
    return (torch.logsumexp(z, dim=-1) - z.diagonal(dim1=1, dim2=2)).sum(-1)
