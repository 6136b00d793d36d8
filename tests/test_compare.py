"""plotpref compare: config validation, and a whole compare on a tiny model through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from plotpref.cli import main as cli_main
from plotpref.compare import CompareConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["compare_quick", "compare_main", "compare_ablations", "compare_lambda", "compare_cost"])
def test_shipped_compare_configs_load(name):
    cfg = CompareConfig.from_yaml(REPO / "configs" / f"{name}.yaml")
    assert cfg.runs
    from plotpref.compare import _eval_config, run_config

    for run in cfg.runs:
        run_config(cfg, run)  # every run builds a valid training config
    _eval_config(cfg)


@pytest.mark.parametrize("data,needle", [
    ({"runs": []}, "non-empty list"),
    ({"runs": [{"objective": "dpo"}]}, "needs a 'name'"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ({"runs": [{"name": "a", "plot_lamda": 3}]}, "did you mean 'plot_lambda'"),
    ({"runs": [{"name": "a"}], "trian": {}}, "unknown option 'trian'"),
    ({"runs": [{"name": "a b"}]}, "letters, digits"),
])
def test_bad_compare_config(tmp_path, capsys, data, needle):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli_main(["compare", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_compare_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "results"
    config = {
        "output_dir": str(out),
        "model": str(tiny_model_dir),
        "train": {"train_data": "hh-harmless-train", "max_steps": 2, "max_train_samples": 8, "max_length": 96,
                  "max_prompt_length": 48, "learning_rate": 1e-3, "report_to": "none", "seed": 0},
        "runs": [{"name": "dpo", "objective": "dpo", "plot": "none"},
                 {"name": "dpo+plot", "objective": "dpo", "plot": "w1", "plot_lambda": 8.0}],
        "eval": {"metrics": ["over_refusal", "preference", "perplexity"], "n_benign": 2, "max_new_tokens": 4,
                 "n_pref_pairs": 4, "n_ppl_pairs": 4, "max_length": 160},
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert cli_main(["compare", "--config", str(path)]) == 0

    result = json.loads((out / "comparison.json").read_text())
    rows = {row["model"]: row for row in result["rows"]}
    assert list(rows) == ["base", "dpo", "dpo+plot"]
    assert rows["dpo+plot"]["final_plot_term"] > 0 and rows["dpo"]["final_plot_term"] is None
    assert rows["dpo"]["steps"] == 2 and rows["dpo"]["seconds_per_step"] > 0
    assert "pref acc harmless %" in rows["dpo"] and "over-refusal %" in rows["base"]
    table = (out / "comparison.md").read_text()
    assert "| dpo+plot | dpo | w1 |" in table and "lines 501-2312" in table
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert (out / "eval" / "report.json").exists()

    # A second compare reuses the trained runs instead of training again.
    before = (out / "runs" / "dpo" / "model.safetensors").stat().st_mtime_ns
    assert cli_main(["compare", "--config", str(path), "--no_eval"]) == 0
    assert (out / "runs" / "dpo" / "model.safetensors").stat().st_mtime_ns == before

    # --only restricts the compare to some runs; an unknown name is a clear error.
    assert cli_main(["compare", "--config", str(path), "--no_eval", "--only", "dpo"]) == 0
    assert [row["model"] for row in json.loads((out / "comparison.json").read_text())["rows"]] == ["base", "dpo"]
    assert cli_main(["compare", "--config", str(path), "--only", "dpo+plt"]) == 2

    # A run trained with other options is not silently reused: clear error, nothing deleted.
    config["runs"][1]["plot_lambda"] = 4.0
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert cli_main(["compare", "--config", str(path), "--no_eval"]) == 2
    assert "plot_lambda: 8.0 -> 4.0" in capsys.readouterr().err
    assert (out / "runs" / "dpo+plot" / "model.safetensors").stat().st_size > 0
