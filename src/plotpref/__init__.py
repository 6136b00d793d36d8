"""plotpref: PLOT, token-level optimal-transport preference learning.

The public maths lives in :mod:`plotpref.ot` (the 1-D Wasserstein term and its ablation
variants), :mod:`plotpref.distribution` (the target preference distribution Q) and
:mod:`plotpref.objectives` (SFT, DPO, PRO, AOT as pure functions of log-probabilities).
"""

__version__ = "0.1.0"

from plotpref.errors import PlotprefError  # noqa: F401
