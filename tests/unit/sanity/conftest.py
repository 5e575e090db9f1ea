"""One torch thread in these tests: their problems are small, and on a shared machine a second
thread waiting for a busy core makes small LAPACK calls (eigh) a hundred times slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
