"""slerpmerge: shorten the token sequence inside a Hugging Face causal LM, by SLERP merges and their kin."""

from .context import Context, prefill
from .patching import merging, patch, settings_of, unpatch
from .merge import Merged, apply_plan, merge_sequence
from .methods import METHODS
from .models import load
from .plan import MergePlan, plan_merge
from .settings import MergeSettings
from .slerp import slerp

__all__ = [
    "slerp",
    "merge_sequence",
    "plan_merge",
    "apply_plan",
    "MergePlan",
    "Merged",
    "METHODS",
    "patch",
    "unpatch",
    "merging",
    "settings_of",
    "MergeSettings",
    "load",
    "prefill",
    "Context",
]
__version__ = "0.2.0"
