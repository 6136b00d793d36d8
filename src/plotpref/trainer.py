"""``PlotTrainer``: transformers' Trainer with a base preference objective plus lambda * PLOT.

    L = L_base + lambda * L_PLOT                                   (paper, eq. 3)

The trainer is glue. The maths lives elsewhere: :mod:`plotpref.objectives` (SFT, DPO, PRO, AOT
as functions of per-sequence log-probabilities) and :mod:`plotpref.ot` (the W1 term and the
ablation variants, as functions of logits). Everything a Trainer gives (accelerate, gradient
accumulation, checkpoints and resume, TensorBoard, LoRA through peft) comes from transformers.

One forward pass per step: a batch holds every example's responses stacked response-major
(rows ``0..B-1`` are the chosen responses, ``B..2B-1`` the rejected ones, ...), so the base
objective's log-probabilities and the PLOT term's next-token distributions come from the same
logits. SFT needs only the chosen rows, so only those are run (unless the PLOT term asks for
the rejected positions too).

Normalisation. Every term is a sum over items divided by the number of items in the whole
optimizer step (all micro-batches of a gradient-accumulation window, all processes): examples
for the sequence-level losses, response tokens for SFT, positions for PLOT. Per-device batch 2
x accumulation 2 therefore gives the same loss and gradients as batch 4 x 1 (AOT excepted: it
sorts within a micro-batch by definition).
"""

from __future__ import annotations

import time
from collections import defaultdict
import torch
from transformers import Trainer

from plotpref import objectives
from plotpref.config import PlotprefConfig

PAIRWISE = ("dpo", "aot", "aot_unpaired")


class PlotTrainer(Trainer):
    """Trainer for ``objective + plot_lambda * distance`` (see the module docstring).

    Args:
        model: the policy (a ``PreTrainedModel`` or a peft model).
        args: a :class:`PlotprefConfig`.
        distance: a ``plotpref.ot`` distance (``distance(logits (N, V)) -> (N,)``), or None for the
            base objective alone.
        ref_model: frozen reference for DPO/AOT when ``args.reference == "copy"``. With
            ``"adapters"`` the policy with its adapters disabled is the reference; with
            ``"precomputed"`` batches carry ``ref_logps``.
    """

    def __init__(self, model, args: PlotprefConfig, *, distance=None, ref_model=None, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        self.distance = distance
        # compute_loss already divides by the whole accumulation window's counts.
        self.loss_is_scaled_for_ga = True
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._tokens_since_log = 0
        self._time_of_last_log = time.perf_counter()
        self.ref_model = None
        if ref_model is not None:
            ref_model.requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref_model.eval(), evaluation_mode=True)

    # ---- counting items for exact gradient accumulation --------------------------------------
    def _local_counts(self, batch) -> dict[str, float]:
        labels = batch["labels"]
        n = batch["num_responses"]
        B = labels.shape[0] // n
        mask = labels[:, 1:] != -100
        rows = self._plot_rows(B, n)
        counts = {
            "examples": float(B),
            "chosen_tokens": float(mask[:B].sum()),
            "plot_positions": float(mask[rows].sum()),
            "plot_sequences": float(rows.stop - rows.start),
        }
        return counts

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        totals = defaultdict(float)
        for batch in batches:
            for key, value in self._local_counts(batch).items():
                totals[key] += value
        if not totals:
            return batches, None
        keys = sorted(totals)
        vec = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=device)
        world = self.accelerator.num_processes
        if world > 1:
            vec = self.accelerator.reduce(vec, reduction="sum")
        # DDP averages gradients over processes, so each process divides by total / world.
        return batches, {k: float(v) / world for k, v in zip(keys, vec.tolist())}

    # ---- the loss -------------------------------------------------------------------------------
    def _plot_rows(self, B: int, n: int) -> slice:
        """The batch rows the PLOT term reads, as a slice: indexing logits (rows, T, V) with a list
        copies them and its backward is a slow accumulate-scatter (measured on CPU: +0.33 s per
        backward of a (4, 256, 49152) logits tensor against +0.15 s for a slice)."""
        which = self.args.plot_positions
        if which == "chosen":
            return slice(0, B)
        if which == "rejected":
            return slice(B, 2 * B)
        return slice(0, B * n)

    def _forward_rows(self, B: int, n: int) -> int:
        """How many rows of the batch the forward pass needs (SFT needs only the chosen ones)."""
        if self.args.objective == "sft" and (self.distance is None or self.args.plot_positions == "chosen"):
            return B
        return B * n

    def _reference_logps(self, model, batch, rows: int) -> torch.Tensor:
        if "ref_logps" in batch:
            return batch["ref_logps"]
        inputs = {"input_ids": batch["input_ids"][:rows], "attention_mask": batch["attention_mask"][:rows]}
        with torch.no_grad():
            if self.ref_model is not None:
                logits = self.ref_model(**inputs, use_cache=False).logits
            else:  # LoRA: the policy with its adapters disabled
                unwrapped = self.accelerator.unwrap_model(model)
                with unwrapped.disable_adapter():
                    logits = model(**inputs, use_cache=False).logits
            logps, _ = objectives.sequence_logps(logits, batch["labels"][:rows])
        return logps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        n = inputs["num_responses"]
        B = inputs["labels"].shape[0] // n
        counts = num_items_in_batch if isinstance(num_items_in_batch, dict) else self._local_counts(inputs)
        rows = self._forward_rows(B, n)
        labels = inputs["labels"][:rows]
        logits = model(input_ids=inputs["input_ids"][:rows], attention_mask=inputs["attention_mask"][:rows],
                       use_cache=False).logits
        logps, lengths = objectives.sequence_logps(logits, labels)
        metrics: dict[str, torch.Tensor] = {}

        # Base objective, as a sum over examples (or tokens) divided by the step's count.
        chosen_logps, chosen_lengths = logps[:B], lengths[:B]
        if args.objective == "sft":
            base = -chosen_logps.sum() / counts["chosen_tokens"]
        elif args.objective == "pro":
            logps_bn, lengths_bn = logps.view(n, B).T, lengths.view(n, B).T
            rewards = inputs.get("rewards")
            ranking = objectives.pro_loss(logps_bn, lengths_bn, rewards=rewards, temperature=args.pro_temperature)
            base = ranking.sum() / counts["examples"] - args.sft_weight * chosen_logps.sum() / counts["chosen_tokens"]
        else:
            rejected_logps = logps[B:2 * B]
            ref = self._reference_logps(model, inputs, 2 * B)
            ref = ref.view(-1) if ref.dim() == 1 else ref[:, :2].T.reshape(-1)
            if args.objective == "dpo":
                losses, chosen_rewards, rejected_rewards = objectives.dpo_loss(
                    chosen_logps, rejected_logps, ref[:B], ref[B:2 * B], beta=args.beta, label_smoothing=args.label_smoothing)
            else:
                losses, chosen_rewards, rejected_rewards = objectives.aot_loss(
                    chosen_logps, rejected_logps, ref[:B], ref[B:2 * B], beta=args.beta,
                    unpaired=args.objective == "aot_unpaired")
            base = losses.sum() / counts["examples"]
            metrics["rewards/chosen"] = chosen_rewards.mean()
            metrics["rewards/rejected"] = rejected_rewards.mean()
            metrics["rewards/margins"] = (chosen_rewards - rejected_rewards).mean()
            metrics["rewards/accuracies"] = (chosen_rewards > rejected_rewards).float().mean()
        metrics["logps/chosen"] = (chosen_logps / chosen_lengths.clamp(min=1)).mean()
        if rows > B:
            metrics["logps/rejected"] = (logps[B:2 * B] / lengths[B:2 * B].clamp(min=1)).mean()

        loss = base
        if self.distance is not None:
            plot_sum, plot_local = self._plot_term(logits, labels, B, n)
            denom = counts["plot_sequences"] if args.plot_mode == "sequence" else counts["plot_positions"]
            loss = base + args.plot_lambda * plot_sum / denom
            metrics["plot_term"] = plot_local
        metrics["base_loss"] = base
        self._record(metrics, tokens=int(inputs["attention_mask"][:rows].sum()))
        return (loss, {"logits": logits}) if return_outputs else loss

    def _plot_term(self, logits: torch.Tensor, labels: torch.Tensor, B: int, n: int):
        """Sum over the selected positions (or sequences) of distance(p_t, Q), and its local mean."""
        rows = self._plot_rows(B, n)
        mask = labels[rows, 1:] != -100  # logits[:, t] predicts labels[:, t + 1]
        selected = logits[rows, :-1][mask]  # (N, V)
        if self.args.plot_mode == "sequence":
            # W1(mean_t p_t, Q): the log of each sequence's mean distribution, which softmax maps
            # back to that mean.
            per_row = mask.sum(1)
            seq = torch.repeat_interleave(torch.arange(len(per_row), device=logits.device), per_row)
            mean_p = torch.zeros(len(per_row), selected.shape[-1], device=logits.device, dtype=torch.float32)
            mean_p = mean_p.index_add(0, seq, torch.softmax(selected.float(), dim=-1))
            mean_p = mean_p / per_row.clamp(min=1).unsqueeze(1)
            values = self.distance(mean_p[per_row > 0].clamp_min(torch.finfo(torch.float32).tiny).log())
        else:
            values = self.distance(selected)
        if values.numel() == 0:
            zero = logits.sum() * 0.0
            return zero, zero.detach()
        return values.sum(), values.detach().mean()

    # ---- logging --------------------------------------------------------------------------------
    def _record(self, metrics: dict[str, torch.Tensor], tokens: int) -> None:
        prefix = "" if self.model.training else "eval_"
        for key, value in metrics.items():
            self._metrics[prefix + key].append(float(value.detach()))
        if self.model.training:
            self._tokens_since_log += tokens

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prefix = "eval_" if any(k.startswith("eval_") for k in logs) else ""
        for key in [k for k in self._metrics if k.startswith("eval_") == bool(prefix)]:
            values = self._metrics.pop(key)
            logs[key] = sum(values) / len(values)
        if not prefix and "train_runtime" not in logs:  # not on the end-of-training summary
            now = time.perf_counter()
            logs["tokens_per_second"] = self._tokens_since_log / max(now - self._time_of_last_log, 1e-9)
            self._tokens_since_log, self._time_of_last_log = 0, now
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
