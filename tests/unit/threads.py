"""One torch thread for unit tests of small problems.

On a shared machine a second thread waiting for a busy core makes small LAPACK calls (eigh) and
tiny forward passes a hundred times slower, and these problems gain nothing from threads. A
package opts in by importing the fixture into its conftest.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
