"""The paper's evaluations: harmlessness under attacks, over-refusal, preference accuracy,
reward, GSM8K and perplexity, over one or more models, reported as JSON, Markdown and PNG.

    from plotpref.evaluate import EvalConfig, run_evaluation
    run_evaluation({"base": None, "dpo+plot": "runs/dpo_plot"}, EvalConfig.quick(), "eval_out")

Modules: :mod:`.config` (EvalConfig), :mod:`.behaviors` (AdvBench / HarmBench), :mod:`.attacks`
(registry of test-case producers), :mod:`.judges` (keyword and model judges, agreement with human
labels), :mod:`.generation` (batched greedy generation, pair scoring), :mod:`.metrics` (pure
metric functions), :mod:`.benchmarks` (one function per metric), :mod:`.report` (run_evaluation,
tables, charts), :mod:`.cli` (``plotpref eval``).
"""

from plotpref.evaluate.attacks import ATTACKS, Attack, TestCase, register_attack
from plotpref.evaluate.config import EvalConfig
from plotpref.evaluate.judges import JUDGES, Judge, register_judge
from plotpref.evaluate.report import run_evaluation, strip_timings

__all__ = ["ATTACKS", "Attack", "EvalConfig", "JUDGES", "Judge", "TestCase", "register_attack", "register_judge", "run_evaluation", "strip_timings"]
