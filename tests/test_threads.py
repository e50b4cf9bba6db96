import warnings

import pytest
import torch

from pmm_geo.train import threads as threads_module
from pmm_geo.train import ThreadWarning, default_threads, set_threads


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(threads_module, 'available_cores', lambda: 4)
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_available_cores_is_the_affinity():
    import os
    if hasattr(os, 'sched_getaffinity'):
        assert threads_module.available_cores() == len(
            os.sched_getaffinity(0))


def test_default_divides_the_cores_among_processes(four_cores):
    assert default_threads() == 4
    assert default_threads(2) == 2
    assert default_threads(3) == 1
    assert default_threads(8) == 1  # Never zero.
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # The default never warns.
        assert set_threads(None, num_processes=2) == 2
        assert torch.get_num_threads() == 2


def test_oversubscription_warns_once_and_is_honoured(four_cores):
    with pytest.warns(ThreadWarning, match=r'--threads 3 x 2 processes '
                      r'oversubscribes the 4 cores .*use 2') as record:
        assert set_threads(3, num_processes=2) == 3
    assert len(record) == 1 and torch.get_num_threads() == 3


def test_omp_num_threads_counts_as_the_users_setting(four_cores,
                                                     monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert set_threads() == 1
    monkeypatch.setenv('OMP_NUM_THREADS', '8')
    with pytest.warns(ThreadWarning, match='OMP_NUM_THREADS 8'):
        set_threads()


def test_bad_count():
    with pytest.raises(ValueError, match="'threads' must be >= 1, got 0"):
        set_threads(0)
