"""FlexEControl tests: one torch thread while they run (tiny models: on a shared 2-core machine extra OpenMP threads
only contend, measured 10x slower), restored afterwards for the rest of the suite."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
