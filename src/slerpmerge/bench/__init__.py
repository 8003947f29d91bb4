"""Speed and memory of base and merged models on the same inputs, beside the ideal from counting the work.

    ideal.py    the ideal speedup from the work each layer does at the length it sees
    timing.py   one prefill, decode steps, the merge and a layer in isolation
    memory.py   a prefill's peak memory (CUDA's allocator, or a fresh child process on the CPU)
    runner.py   base and variants interleaved on the same inputs: one row per variant
    report.py   the machine, the table, the plot
    command.py  `slerpmerge bench`
"""

from .command import add_parser
from .ideal import causal_pairs, flops, ideal_speedup, layer_work, rerun_speedup
from .memory import cpu_peak_bytes, return_freed_memory, rss_peak
from .runner import Row, bench_ids, bench_model

__all__ = ["add_parser", "causal_pairs", "flops", "ideal_speedup", "layer_work", "rerun_speedup", "cpu_peak_bytes",
           "return_freed_memory", "rss_peak", "Row", "bench_ids", "bench_model"]
