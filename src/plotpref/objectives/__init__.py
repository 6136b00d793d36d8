"""The base objectives, SFT, DPO, PRO and AOT, as pure functions of log-probabilities.

A trainer computes per-sequence log-probabilities once with :func:`sequence_logps` and feeds
them to one objective; the PLOT term (:mod:`plotpref.ot`) is added on top. Nothing here knows
about models, batches or optimisers.
"""

from plotpref.objectives.aot import aot_loss
from plotpref.objectives.common import IGNORE_INDEX, sequence_logps
from plotpref.objectives.dpo import dpo_loss
from plotpref.objectives.pro import pro_loss
from plotpref.objectives.sft import sft_loss

__all__ = ["IGNORE_INDEX", "aot_loss", "dpo_loss", "pro_loss", "sequence_logps", "sft_loss"]
