r"""Shared pytest fixtures."""
from pathlib import Path

import pytest
import torch

#: Real data beside the checkout (``../shared/data``); absent in a user's
#: clone, so tests that need it must skip.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture(autouse=True, scope='session')
def one_thread():
    r"""The tests use tiny tensors: a second OpenMP thread only adds
    hand-off overhead (10-100x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def still_one_thread(one_thread):
    r"""Back to one thread after every test, so that one which changes the
    count (the command line's :obj:`--threads`) cannot make the next ones
    (or the module fixtures they build) run nondeterministically."""
    yield
    torch.set_num_threads(1)


@pytest.fixture
def synthetic_data():
    r"""A small synthetic dataset with planted structure: 120 users,
    80 items, 1,500 interactions (one val and one test item per user),
    16-d :obj:`image` and 8-d :obj:`text` features. Fresh per test, so
    tests may modify it."""
    from pmm_geo.data import synthetic
    return synthetic(num_users=120, num_items=80, num_interactions=1500,
                     modalities={'image': 16, 'text': 8}, seed=0)


@pytest.fixture
def shared_data() -> Path:
    r"""The ``../shared/data`` folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'real data folder {SHARED_DATA} is absent (it lives '
                    f'beside the checkout, never in the repository)')
    return SHARED_DATA


@pytest.fixture
def interrupt_after():
    r"""A factory of :obj:`Trainer(on_epoch_end=...)` hooks that simulate a
    kill: :class:`TrainingInterrupted` right after the checkpoint of the
    :obj:`n`-th epoch run (counted over all stages)."""
    from pmm_geo.train import TrainingInterrupted

    def hook(n: int):
        epochs = []

        def on_epoch_end(stage, record):
            epochs.append((stage, record['epoch']))
            if len(epochs) >= n:
                raise TrainingInterrupted(f'interrupted after epoch '
                                          f"{record['epoch']} of '{stage}'")
        return on_epoch_end
    return hook
