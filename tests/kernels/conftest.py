"""The Triton kernels run on the host here: TRITON_INTERPRET must be set before anything imports triton.

Kernel tests compare both implementations with plain softmax attention over each branch's concatenated KV.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread() -> Iterator[None]:
    """These tensors are tiny: on a busy machine, waking a second thread costs more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
