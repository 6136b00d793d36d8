"""Alignment via Optimal Transport (AOT): DPO's logistic loss on sorted, rank-paired margins."""

from __future__ import annotations

import warnings

import torch

from plotpref.objectives.common import check_beta, check_label_smoothing, check_same_shape, logistic_loss

_warned_batch_of_one = False


def aot_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    unpaired: bool = False,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""AOT loss of Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal
    Transport" (NeurIPS 2024, https://arxiv.org/abs/2406.05882).

    AOT asks for first-order stochastic dominance of one batch distribution over another. In
    one dimension the optimal transport plan between two empirical distributions of B points
    pairs them by rank, so both sides are sorted *separately* (ascending, over the batch) and the
    logistic loss is applied to the rank-wise differences::

        paired   (unpaired=False):  a = sort(log π(y+) - log π(y-)),   b = sort(log π_ref(y+) - log π_ref(y-))
        unpaired (unpaired=True):   a = sort(log π(y+) - log π_ref(y+)), b = sort(log π(y-) - log π_ref(y-))

        L_i = -(1 - ε) · log σ(β (a_i - b_i)) - ε · log σ(-β (a_i - b_i)),   i = 1..B (ranks)

    The paired form makes the policy's chosen-vs-rejected margins dominate the reference's; the
    unpaired form makes the chosen responses' implicit rewards dominate the rejected ones', and
    does not use which chosen response goes with which rejected one.

    Mapping to TRL (1.16): ``unpaired=False`` is ``loss_type="aot"``; ``unpaired=True`` is
    ``loss_type="aot_unpaired"``, which TRL 0.x called ``"aot_pair"`` despite its sorting the
    chosen and rejected rewards separately.

    With B = 1 a sort is the identity and both forms equal :func:`~plotpref.objectives.dpo_loss`
    (a warning says so, once per process): AOT needs batches of several pairs.

    Args:
        policy_chosen_logps (torch.Tensor): log π(y+|x), shape (B,).
        policy_rejected_logps (torch.Tensor): log π(y-|x), shape (B,).
        ref_chosen_logps (torch.Tensor): log π_ref(y+|x), shape (B,).
        ref_rejected_logps (torch.Tensor): log π_ref(y-|x), shape (B,).
        beta (float): β > 0.
        unpaired (bool): sort the chosen and rejected implicit rewards instead of the margins.
        label_smoothing (float): ε in [0, 0.5), as in :func:`~plotpref.objectives.dpo_loss`
            (and TRL's AOT losses).

    Returns:
        tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            - losses: shape (B,), one per *rank*, not per example (only their mean is meaningful).
            - chosen_rewards: β (log π(y+|x) - log π_ref(y+|x)), shape (B,), detached, per example.
            - rejected_rewards: β (log π(y-|x) - log π_ref(y-|x)), shape (B,), detached, per example.

    Raises:
        PlotprefError: if the inputs are not of one shape (B,), β ≤ 0 or ε is outside [0, 0.5).
    """
    check_same_shape(
        "aot_loss",
        1,
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    check_beta("aot_loss", beta)
    check_label_smoothing("aot_loss", label_smoothing)
    global _warned_batch_of_one
    if policy_chosen_logps.shape[0] == 1 and not _warned_batch_of_one:
        _warned_batch_of_one = True
        warnings.warn(
            "aot_loss on a batch of one pair is exactly dpo_loss: AOT sorts within the batch, so give it "
            "at least 2 pairs per device batch (gradient accumulation does not help)",
            stacklevel=2,
        )

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    if unpaired:
        upper, lower = chosen_logratios, rejected_logratios
    else:
        upper, lower = policy_chosen_logps - policy_rejected_logps, ref_chosen_logps - ref_rejected_logps
    delta = torch.sort(upper).values - torch.sort(lower).values
    losses = logistic_loss(delta, beta, label_smoothing)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
