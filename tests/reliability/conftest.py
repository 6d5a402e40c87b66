"""Shared fixtures of the reliability tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_intra_op_thread():
    """One intra-op thread for the test (restored after): the tiny models here spend most of a
    multi-threaded call waiting on the thread pool, more so on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
