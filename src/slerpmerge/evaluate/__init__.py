"""Evaluation: what each method costs in quality and buys in speed, beside the baselines at the same speed.

    tasks.py    the long-context tasks (pass keys, secret words, several facts, document questions)
    ruler.py    NVIDIA's RULER: its 13 tasks made by its own code (_ruler_maker.py) in the model's tokenizer
    corpus.py   prose windows of exact token length
    runs.py     one prompt under one setting: a patch method, or a baseline (base, truncate, select)
    speed.py    each setting's measured prefill speedup, on a pass of its own
    metrics.py  next-token agreement and KL, intervals
    sweep.py    settings × windows and items (and RULER's items), resumable
    summary.py  rates with intervals, speed beside them
    plots.py    quality against speed
    command.py  `slerpmerge eval`
"""

from ..methods import METHODS
from .command import add_parser, default_settings, run
from .corpus import read_texts
from .plots import plot_all
from .runs import BASELINES
from .summary import summarise, write_csv
from .sweep import speed_sweep, sweep

PATCH_METHODS = tuple(METHODS)

__all__ = ["add_parser", "default_settings", "run", "read_texts", "plot_all", "BASELINES", "PATCH_METHODS",
           "summarise", "write_csv", "sweep", "speed_sweep"]
