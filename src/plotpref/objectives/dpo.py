"""Direct Preference Optimization (sigmoid loss, optionally label-smoothed)."""

from __future__ import annotations

import torch

from plotpref.objectives.common import check_beta, check_label_smoothing, check_same_shape, logistic_loss


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""DPO loss of Rafailov et al., "Direct Preference Optimization: Your Language Model is
    Secretly a Reward Model" (NeurIPS 2023, https://arxiv.org/abs/2305.18290), eq. 7::

        h = (log π(y+|x) - log π_ref(y+|x)) - (log π(y-|x) - log π_ref(y-|x))

        L = -(1 - ε) · log σ(β h) - ε · log σ(-β h)

    With ε = ``label_smoothing`` = 0 this is eq. 7; ε > 0 is conservative DPO (cDPO, Mitchell,
    "A note on DPO with noisy preferences", 2023): ε is the probability that a pair's labels are
    flipped. This is TRL's ``loss_type="sigmoid"`` (TRL 1.x drops the ε term; TRL 0.x and the
    reference implementation keep it).

    Log-probabilities are summed over response tokens (:func:`~plotpref.objectives.sequence_logps`).

    Args:
        policy_chosen_logps (torch.Tensor): log π(y+|x) of the policy, shape (B,).
        policy_rejected_logps (torch.Tensor): log π(y-|x) of the policy, shape (B,).
        ref_chosen_logps (torch.Tensor): log π_ref(y+|x) of the reference model, shape (B,).
        ref_rejected_logps (torch.Tensor): log π_ref(y-|x) of the reference model, shape (B,).
        beta (float): β > 0, the strength of the implicit KL penalty towards the reference.
        label_smoothing (float): ε in [0, 0.5).

    Returns:
        tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            - losses: shape (B,), one per pair (the training loss is their mean).
            - chosen_rewards: β (log π(y+|x) - log π_ref(y+|x)), shape (B,), detached.
            - rejected_rewards: β (log π(y-|x) - log π_ref(y-|x)), shape (B,), detached.

    Raises:
        PlotprefError: if the inputs are not of one shape (B,), β ≤ 0 or ε is outside [0, 0.5).
    """
    check_same_shape(
        "dpo_loss",
        1,
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    check_beta("dpo_loss", beta)
    check_label_smoothing("dpo_loss", label_smoothing)

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = logistic_loss(chosen_logratios - rejected_logratios, beta, label_smoothing)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
