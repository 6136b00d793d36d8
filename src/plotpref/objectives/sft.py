"""Supervised fine-tuning on the chosen responses."""

from __future__ import annotations

import torch

from plotpref.objectives.common import check_same_shape


def sft_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    r"""Token-mean negative log-likelihood of the chosen responses over the batch.

    ::

        L_SFT = - Σ_b log π(y_b^+ | x_b) / Σ_b |y_b^+|

    i.e. the cross-entropy averaged over every response token of the batch (each token counts
    once, so long responses weigh more than short ones, as in ``transformers``' causal-LM loss).

    Args:
        chosen_logps (torch.Tensor): summed log-probabilities of the chosen responses, shape (B,),
            as returned by :func:`~plotpref.objectives.sequence_logps`.
        chosen_lengths (torch.Tensor): number of tokens of each chosen response, shape (B,).

    Returns:
        torch.Tensor: scalar loss; 0 when the batch has no response token.

    Raises:
        PlotprefError: if the two tensors are not of one shape (B,).
    """
    check_same_shape("sft_loss", 1, chosen_logps=chosen_logps, chosen_lengths=chosen_lengths)
    total = chosen_lengths.sum().to(chosen_logps.dtype).clamp(min=1)
    return -chosen_logps.sum() / total
