"""slerpmerge: shorten the token sequence inside a Hugging Face causal LM by merging consecutive tokens with SLERP."""

from .merge import MergePlan, Merged, apply_plan, merge_sequence, plan_merge
from .models import load
from .hooks import MergeSettings, merging, patch, settings_of, unpatch
from .slerp import slerp

__all__ = [
    "slerp",
    "merge_sequence",
    "plan_merge",
    "apply_plan",
    "MergePlan",
    "Merged",
    "patch",
    "unpatch",
    "merging",
    "settings_of",
    "MergeSettings",
    "load",
]
__version__ = "0.1.0"
