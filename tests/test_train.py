"""Training: the CLI end to end on the real model and data, accumulation equivalence, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plotpref.cli import main as cli_main
from plotpref.config import parse_config

REPO = Path(__file__).resolve().parents[1]


def _common(model: Path | None, out: Path, **extra) -> list[str]:
    args = {"train_data": "hh-harmless-train", "max_length": 96, "max_prompt_length": 48, "report_to": "none",
            "output_dir": str(out), "seed": 0, "logging_steps": 1, "save_strategy": "no", **extra}
    if model is not None:
        args["model"] = str(model)
    argv = []
    for key, value in args.items():
        argv += [f"--{key}", str(value)]
    return argv


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# ---- the 8 combinations through the CLI on the real default model ----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo", "pro", "aot"])
@pytest.mark.parametrize("plot", ["none", "w1"])
def test_cli_trains_every_objective_with_and_without_plot(tmp_path, objective, plot):
    from plotpref.models import default_model_path

    out = tmp_path / f"{objective}-{plot}"
    code = cli_main(["train", *_common(None, out, objective=objective, plot=plot, max_steps=2,
                                       max_train_samples=8, learning_rate=1e-5)])
    assert code == 0
    summary = json.loads((out / "train_summary.json").read_text())
    steps = [h for h in summary["log_history"] if "base_loss" in h]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in steps)
    if plot == "w1":
        assert all(0 < h["plot_term"] < float("inf") for h in steps), steps
        assert (out / "distribution").is_dir()
    else:
        assert all("plot_term" not in h for h in steps)
    if objective in ("dpo", "aot"):
        assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(steps[0])
    assert all(h["tokens_per_second"] > 0 for h in steps)
    # Every trainable parameter changed.
    before, after = _weights(default_model_path()), _weights(out)
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    assert (out / "plotpref_config.yaml").exists() and not (out / "training_args.bin").exists()


# ---- batch 2 x accumulation 2 == batch 4 x 1 ------------------------------------------------------
@pytest.mark.parametrize("objective,plot", [("dpo", "w1"), ("sft", "w1"), ("pro", "none")])
def test_accumulation_matches_larger_batch(tmp_path, tiny_model_dir, objective, plot):
    """One SGD step with lr = 1 moves every weight by minus its gradient: compare the moves."""
    from plotpref.train import train

    def run(batch, accumulation, name):
        cfg = parse_config(_common(tiny_model_dir, tmp_path / name, objective=objective, plot=plot,
                                   per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                                   max_steps=1, max_train_samples=4, optim="sgd", learning_rate=1.0,
                                   max_grad_norm=0, lr_scheduler_type="constant", dataloader_drop_last=True))
        summary = train(cfg)
        return summary["log_history"][0]["loss"], _weights(tmp_path / name)

    start = _weights(tiny_model_dir)
    loss_big, big = run(4, 1, "4x1")
    loss_acc, acc = run(2, 2, "2x2")
    assert loss_acc == pytest.approx(loss_big, abs=1e-5)
    for name in start:
        step_big, step_acc = start[name] - big[name], start[name] - acc[name]
        torch.testing.assert_close(step_acc, step_big, atol=1e-5, rtol=0, msg=name)
    assert any((start[n] - big[n]).abs().max() > 1e-4 for n in start), "the step did not move the weights"


# ---- a run killed mid-way and resumed ends where an uninterrupted run ends -------------------------
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from plotpref.config import parse_config
    from plotpref.train import train

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    train(parse_config(sys.argv[1:]), callbacks=[KillAfterCheckpoint()])
""")


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    common = dict(objective="dpo", plot="w1", max_steps=4, max_train_samples=8, learning_rate=1e-3,
                  save_strategy="steps", save_steps=2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli_main(["train", *_common(tiny_model_dir, straight, **common)]) == 0

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *_common(tiny_model_dir, killed, **common)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "checkpoint-2").is_dir() and not (killed / "model.safetensors").exists()

    assert cli_main(["train", *_common(tiny_model_dir, killed, **common),
                     "--resume_from_checkpoint", str(killed / "checkpoint-2")]) == 0
    a, b = _weights(straight), _weights(killed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)
    assert any(not torch.equal(a[n], _weights(tiny_model_dir)[n]) for n in a)


# ---- bad input: a clear message and exit code 2 ------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["--objective", "dop"], "did you mean 'dpo'"),
    (["--plot", "w2"], "plot: unknown value 'w2'"),
    (["--train_data", "/nonexistent/pairs.jsonl"], "/nonexistent/pairs.jsonl"),
    (["--model", "./no-such-model"], "does not exist"),
    (["--train_lines", "10"], "train_lines"),
])
def test_bad_input_exits_2_with_message(tmp_path, capsys, argv, needle):
    code = cli_main(["train", "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--max_steps", "1", *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: dpo\nplot_lamda: 8\n")
    assert cli_main(["train", "--config", str(bad)]) == 2
    assert "unknown option 'plot_lamda' (did you mean 'plot_lambda'?)" in capsys.readouterr().err
    bad.write_text("objective: [dpo\n")
    assert cli_main(["train", "--config", str(bad)]) == 2
    assert "line" in capsys.readouterr().err


def test_malformed_data_line_is_reported(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "hi", "chosen": "hello", "rejected": "go away"}\n{"prompt": "x", "chosen": \n')
    code = cli_main(["train", "--train_data", str(data), "--output_dir", str(tmp_path / "o"), "--report_to", "none"])
    assert code == 2
    assert "pairs.jsonl:2" in capsys.readouterr().err


def test_tokenizer_without_pad_token(tmp_path, tiny_model_dir, caplog, capsys):
    """No pad token: EOS pads (with a warning, as TRL does); neither pad nor EOS: a clear error."""
    import json as _json
    import shutil

    from plotpref.models import load_tokenizer

    def copy_without(tokens: list[str]) -> Path:
        folder = tmp_path / "-".join(tokens)
        shutil.copytree(tiny_model_dir, folder)
        config = folder / "tokenizer_config.json"
        data = _json.loads(config.read_text())
        for key in tokens:
            data[key] = None
        config.write_text(_json.dumps(data))
        return folder

    no_pad = copy_without(["pad_token"])
    with caplog.at_level("WARNING"):
        tokenizer = load_tokenizer(str(no_pad))
    assert tokenizer.pad_token == tokenizer.eos_token and "no pad token" in caplog.text
    assert cli_main(["train", *_common(no_pad, tmp_path / "o1", objective="dpo", plot="none", max_steps=1,
                                       max_train_samples=2)]) == 0

    neither = copy_without(["pad_token", "eos_token"])
    assert cli_main(["train", *_common(neither, tmp_path / "o2", max_steps=1)]) == 2
    assert "neither a pad nor an EOS token" in capsys.readouterr().err


def test_folder_without_a_model_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["train", *_common(empty, tmp_path / "o", max_steps=1)]) == 2
    err = capsys.readouterr().err
    assert "holds no Hugging Face model" in err and "Traceback" not in err


def test_precomputed_reference_matches_frozen_copy(tmp_path, tiny_model_dir, monkeypatch):
    """Reference log-probs computed once (and cached) give the same losses as a frozen copy (step 2:
    after one update the policy differs from the reference, so the reference values matter)."""
    from plotpref.train import train

    monkeypatch.setenv("PLOTPREF_CACHE", str(tmp_path / "cache"))
    losses = {}
    for reference in ("copy", "precomputed"):
        cfg = parse_config(_common(tiny_model_dir, tmp_path / reference, objective="dpo", plot="none", max_steps=2,
                                   max_train_samples=4, learning_rate=1e-2, reference=reference))
        losses[reference] = [h["loss"] for h in train(cfg)["log_history"] if "base_loss" in h]
    assert abs(losses["copy"][1] - 0.6931) > 1e-3  # the second step is not the trivial log 2
    assert losses["precomputed"] == pytest.approx(losses["copy"], abs=1e-6)
    assert any((tmp_path / "cache" / "ref_logps").iterdir())
