import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2():
    from slerpmerge.models import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    from slerpmerge.models import load

    return load("gemma3-270m")
