"""Small internal helpers shared across vlsafe's modules."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads, restoring the caller's setting on exit.

    Streaming, memory-bound loops (weight diffs, merges) gain nothing from a second thread, and on a
    busy machine every parallel op waits for a descheduled worker (milliseconds per op).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
