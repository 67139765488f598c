"""The process-wide CPU worker pool (regpose.models.layers.thread_pool): one pool per size, reused across calls,
whose workers run torch ops single-threaded while the caller keeps its own thread count."""
import torch

from regpose.models.layers.thread_pool import worker_pool


def test_workers_are_single_threaded_and_the_pool_is_reused():
    caller = torch.get_num_threads()
    pool = worker_pool(2)
    assert worker_pool(2) is pool                                  # no new threads per call
    assert list(pool.map(lambda _: torch.get_num_threads(), range(4))) == [1] * 4
    assert torch.get_num_threads() == caller                       # the caller's setting is untouched
    other = worker_pool(3)
    assert other is not pool and other._max_workers == 3           # another size replaces it
    assert list(other.map(lambda i: i * i, range(5))) == [0, 1, 4, 9, 16]
