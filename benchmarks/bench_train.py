"""DPO against DPO+PLOT: time per optimizer step on the default model and data, side by side.

The two variants train their own copies of the same start model on the same batches; their
steps are interleaved (DPO step k, DPO+PLOT step k, DPO step k+1, ...) so that both see the same
load on a shared machine, and the figure reported is the ratio of the medians. The paper reports
+2.67% training time for PLOT; the target here is at most +5%.

    python benchmarks/bench_train.py [--steps 12] [--batch 2] [--max_length 256]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--lora", action="store_true", help="LoRA adapters instead of full fine-tuning")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from plotpref.config import PlotprefConfig
    from plotpref.train import TrainCollator, build_distance, prepare_rows
    from plotpref.trainer import PlotTrainer
    from plotpref.models import load_model, load_tokenizer

    def config(plot: str) -> PlotprefConfig:
        return PlotprefConfig(output_dir="/tmp/plotpref-bench-train", objective="dpo", plot=plot, report_to="none",
                              max_length=args.max_length, max_prompt_length=args.max_length // 2,
                              per_device_train_batch_size=args.batch, use_lora=args.lora, learning_rate=1e-6)

    tokenizer = load_tokenizer()
    start_model = load_model()
    rows, _ = prepare_rows(config("none"), tokenizer)
    collate = TrainCollator(tokenizer.pad_token_id)
    warmup = 2
    batches = [collate(rows[i * args.batch:(i + 1) * args.batch]) for i in range(warmup + args.steps)]

    variants = {}
    for name, plot in (("dpo", "none"), ("dpo+plot", "w1")):
        cfg = config(plot)
        model = copy.deepcopy(start_model)
        distance, _ = build_distance(cfg, model, tokenizer)
        ref = copy.deepcopy(start_model)
        if args.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
            ref = None
        trainer = PlotTrainer(model=model, args=cfg, distance=distance, ref_model=ref, train_dataset=rows,
                              data_collator=collate, processing_class=tokenizer)
        trainer.create_optimizer_and_scheduler(num_training_steps=len(batches))
        model.train()
        variants[name] = (trainer, model)

    times = {name: [] for name in variants}
    plot_share = []
    for k, batch in enumerate(batches):
        for name, (trainer, model) in variants.items():
            start = time.perf_counter()
            loss = trainer.compute_loss(model, batch)
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            if k >= warmup:
                times[name].append(time.perf_counter() - start)

    # The PLOT term alone on a batch's chosen positions, to see its share directly.
    trainer, model = variants["dpo+plot"]
    for batch in batches[warmup:]:
        B = batch["labels"].shape[0] // 2
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"][:B], attention_mask=batch["attention_mask"][:B]).logits
        selected = logits[:, :-1][batch["labels"][:B, 1:] != -100].detach().requires_grad_(True)
        start = time.perf_counter()
        trainer.distance(selected).sum().backward()
        plot_share.append((time.perf_counter() - start, selected.shape[0]))

    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["dpo+plot"] / med["dpo"]
    positions = statistics.median(n for _, n in plot_share)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"setup: default model, {'LoRA' if args.lora else 'full fine-tuning'}, batch {args.batch} pairs, "
          f"max_length {args.max_length}, {args.steps} timed steps each, interleaved")
    for name, t in times.items():
        print(f"  {name:<9} median {med[name]:.3f} s/step  (min {min(t):.3f}, max {max(t):.3f})")
    print(f"  DPO+PLOT / DPO time per step: {ratio:.3f}  ({(ratio - 1) * 100:+.1f}%; paper: +2.67%; target <= +5%)")
    print(f"  PLOT term alone, forward+backward: median {statistics.median(s for s, _ in plot_share) * 1000:.1f} ms "
          f"for a median of {positions:.0f} positions")


if __name__ == "__main__":
    main()
