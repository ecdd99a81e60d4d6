"""The DropBlock search on Optuna: which block size, keep_prob, stages and placement help a detector.

``tools/tune.py`` is its command line (:func:`main`). :mod:`.space` reads and checks the search
space, :mod:`.runs` builds a run's train_net command and trains one setting on one seed in its own
process, sharing the result with every worker, :mod:`.study` holds the objective, the worker loop
and the held-out verdict, and :mod:`.report` writes ``report.md``, ``best.yaml`` and the plots.
"""

from .cli import main

__all__ = ["main"]
