"""``plotpref train``: fine-tune with SFT, DPO, PRO or AOT, with or without the PLOT term.

    plotpref train                                   # DPO + PLOT on the built-in defaults
    plotpref train --config configs/dpo_plot.yaml --max_steps 10

Writes to ``output_dir``: the model (or LoRA adapter) in Hugging Face format (safetensors) with
its tokenizer, ``plotpref_config.yaml`` (the resolved config), ``distribution/`` (the target
preference distribution used), ``train_summary.json``, checkpoints and TensorBoard logs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import TrainerCallback, set_seed

from plotpref import objectives
from plotpref.config import PlotprefConfig, parse_config
from plotpref.data import PreferenceCollator, load_preference_data, tokenize_example
from plotpref.errors import PlotprefError
from plotpref.models import cache_dir, load_model, load_tokenizer

logger = logging.getLogger(__name__)


class TrainCollator:
    """plotpref.data's collator, plus ``num_responses`` and (when precomputed) ``ref_logps`` (B, n)."""

    def __init__(self, pad_token_id: int):
        self.inner = PreferenceCollator(pad_token_id)

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.inner([{k: v for k, v in row.items() if k != "ref_logps"} for row in rows])
        batch["num_responses"] = len(rows[0]["input_ids"])
        if "ref_logps" in rows[0]:
            batch["ref_logps"] = torch.tensor([row["ref_logps"] for row in rows], dtype=torch.float32)
        return batch


# ---- data -----------------------------------------------------------------------------------------
def prepare_rows(cfg: PlotprefConfig, tokenizer) -> tuple[list[dict], dict]:
    """Load and tokenise the training pairs; returns the rows and counts of what was dropped."""
    examples = load_preference_data(cfg.train_data, lines=cfg.line_range, format=cfg.data_format)
    if cfg.max_train_samples:
        examples = examples[: cfg.max_train_samples]
    if cfg.objective == "pro":
        sizes = {len(ex.responses) for ex in examples}
        if len(sizes) > 1:
            raise PlotprefError(
                f"{cfg.train_data}: PRO needs the same number of ranked responses in every example; found {sorted(sizes)}")
    rows, truncated = [], 0
    for ex in tqdm(examples, desc="tokenising", unit="pair", disable=len(examples) < 200):
        if cfg.objective != "pro" and len(ex.responses) > 2:
            ex = copy.copy(ex)
            ex.responses, ex.rewards = ex.responses[:2], (ex.rewards[:2] if ex.rewards else None)
        row = tokenize_example(ex, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
        if row is None:
            truncated += 1
            continue
        rows.append(row)
    stats = {"examples": len(examples), "kept": len(rows), "dropped_truncated": truncated}
    if truncated:
        logger.warning("dropped %d of %d examples whose response was truncated away (max_length=%d, max_prompt_length=%d)",
                       truncated, len(examples), cfg.max_length, cfg.max_prompt_length)
    if not rows:
        raise PlotprefError(f"{cfg.train_data}: no training example is left after tokenisation (see the log above)")
    return rows, stats


# ---- reference log-probabilities ------------------------------------------------------------------
def model_fingerprint(model) -> str:
    digest = hashlib.sha256(model.config.to_json_string().encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def precompute_reference(model, rows: list[dict], pad_token_id: int, batch_size: int = 4) -> None:
    """Add ``ref_logps`` (one per response) to each row, cached on disk by data and model fingerprint."""
    data_digest = hashlib.sha256(json.dumps([[r["input_ids"], r["labels"]] for r in rows]).encode()).hexdigest()[:16]
    path = cache_dir() / "ref_logps" / f"{model_fingerprint(model)}-{data_digest}.safetensors"
    if path.exists():
        logps = load_file(path)["ref_logps"]
        logger.info("reference log-probs loaded from %s", path)
    else:
        collate = PreferenceCollator(pad_token_id)
        out = []
        model.eval()
        with torch.no_grad():
            for start in tqdm(range(0, len(rows), batch_size), desc="reference log-probs", unit="batch"):
                chunk = rows[start:start + batch_size]
                batch = collate(chunk)
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
                lp, _ = objectives.sequence_logps(logits, batch["labels"])
                out.append(lp.view(-1, len(chunk)).T)  # response-major rows -> (B, n)
        logps = torch.cat(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"ref_logps": logps.contiguous()}, path)
        logger.info("reference log-probs cached at %s", path)
    for row, values in zip(rows, logps.tolist()):
        row["ref_logps"] = values


# ---- the PLOT term ------------------------------------------------------------------------------
def build_distance(cfg: PlotprefConfig, model, tokenizer):
    """The extra term's distance and the preference distribution it uses (None, None for plot=none)."""
    if cfg.plot == "none":
        return None, None
    from plotpref.distribution import PreferenceDistribution, load_or_build_distribution
    from plotpref.ot import make_distance, token_positions

    vocab_size = model.get_output_embeddings().weight.shape[0]
    if cfg.distribution:
        dist = PreferenceDistribution.load(cfg.distribution, vocab_size=vocab_size)
    else:
        dist = load_or_build_distribution(
            cfg.train_data, tokenizer, vocab_size=vocab_size, cache_dir=cache_dir() / "distributions",
            lines=cfg.line_range, format=cfg.data_format, transform=cfg.plot_transform,
            temperature=cfg.plot_temperature)
    support = token_positions(model, p=cfg.plot_norm_p, source=cfg.plot_embedding)
    distance = make_distance(cfg.plot, support=support, target=dist.q.float(), delta_f=dist.delta_f.float(),
                             chunk_size=cfg.plot_chunk_size)
    return distance, dist


class RefreshSupport(TrainerCallback):
    """Recompute the token positions x_v every N optimizer steps (when embeddings are trained)."""

    def __init__(self, trainer, cfg: PlotprefConfig, target: torch.Tensor, delta_f: torch.Tensor):
        self.trainer, self.cfg, self.target, self.delta_f = trainer, cfg, target, delta_f

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.cfg.plot_refresh_steps == 0:
            from plotpref.ot import make_distance, token_positions

            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            support = token_positions(model, p=self.cfg.plot_norm_p, source=self.cfg.plot_embedding)
            self.trainer.distance = make_distance(self.cfg.plot, support=support, target=self.target,
                                                  delta_f=self.delta_f, chunk_size=self.cfg.plot_chunk_size)


# ---- the run ----------------------------------------------------------------------------------
def train(cfg: PlotprefConfig, callbacks: list[TrainerCallback] | None = None) -> dict:
    """Run one training job end to end; returns the summary written to train_summary.json.

    ``callbacks`` are added to the Trainer (transformers ``TrainerCallback`` objects).
    """
    from plotpref.trainer import PlotTrainer

    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    tokenizer = load_tokenizer(cfg.model)
    rows, data_stats = prepare_rows(cfg, tokenizer)  # before the model: a data error shows at once
    model = load_model(cfg.model, dtype=cfg.model_dtype)
    distance, dist = build_distance(cfg, model, tokenizer)

    if cfg.objective in ("aot", "aot_unpaired") and cfg.per_device_train_batch_size == 1:
        logger.warning("AOT with per_device_train_batch_size=1 sorts a single pair: it is exactly DPO. Use a batch > 1.")

    reference = cfg.reference
    if cfg.uses_reference and reference == "auto":
        reference = "adapters" if cfg.use_lora else "copy"
    ref_model = None
    if cfg.uses_reference and reference == "precomputed":
        precompute_reference(model, rows, tokenizer.pad_token_id)
    elif cfg.uses_reference and reference == "copy":
        ref_model = copy.deepcopy(model)

    if cfg.use_lora:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    model.train()

    trainer = PlotTrainer(model=model, args=cfg, distance=distance, ref_model=ref_model, train_dataset=rows,
                          data_collator=TrainCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    if distance is not None and cfg.plot_refresh_steps:
        trainer.add_callback(RefreshSupport(trainer, cfg, dist.q.float(), dist.delta_f.float()))

    out.mkdir(parents=True, exist_ok=True)
    (out / "plotpref_config.yaml").write_text(yaml.safe_dump(cfg.plotpref_fields(), sort_keys=False))
    if dist is not None:
        dist.save(out / "distribution")

    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    seconds = time.perf_counter() - start
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    # The resolved config is in plotpref_config.yaml; drop the Trainer's pickled copy of it.
    (out / "training_args.bin").unlink(missing_ok=True)

    summary = {
        "objective": cfg.objective,
        "plot": cfg.plot,
        "plot_lambda": cfg.plot_lambda if cfg.plot != "none" else 0.0,
        "reference": reference if cfg.uses_reference else "none",
        "data": {"source": cfg.train_data, "lines": cfg.train_lines, **data_stats},
        "global_step": trainer.state.global_step,
        "train_seconds": seconds,
        "seconds_per_step": seconds / max(trainer.state.global_step, 1),
        "train_loss": result.training_loss,
        "log_history": trainer.state.log_history,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("saved %s to %s (%d steps, %.1f s)", "adapter" if cfg.use_lora else "model", out,
                trainer.state.global_step, seconds)
    return summary


def main(argv: list[str]) -> int:
    cfg = parse_config(argv)
    train(cfg)
    return 0
