import os

import pytest
import torch
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# No per-example deadline: a test's first example also pays torch's first-call set-up (0.5 s seen on a shared CI
# core), and speed belongs in benchmarks, not in tests.
settings.register_profile("slerpmerge", deadline=None)
settings.load_profile("slerpmerge")


@pytest.fixture(scope="session")
def smollm2():
    from slerpmerge.models import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    from slerpmerge.models import load

    return load("gemma3-270m")
