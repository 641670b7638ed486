import numpy as np
import pytest

from hvdtrain.core.sharding import ShardedOrder


def _shards(n, size, batch, epoch=0, start=0, **kw):
    orders = [ShardedOrder(n, r, size, batch, seed=3, **kw) for r in range(size)]
    for o in orders:
        o.set_epoch(epoch, start)
    return [list(o) for o in orders]


@pytest.mark.parametrize("n, size, batch", [(1437, 2, 32), (100, 3, 8), (9, 2, 4), (11, 2, 5), (64, 4, 16)])
def test_every_sample_once_and_equal_steps(n, size, batch):
    shards = _shards(n, size, batch)
    assert len({len(s) for s in shards}) == 1, "all ranks must take the same number of steps"
    seen = np.concatenate([b for s in shards for b in s])
    assert sorted(seen) == list(range(n))
    assert all(len(b) > 0 for s in shards for b in s)


def test_epochs_reshuffle_identically_on_all_ranks():
    a, b = ShardedOrder(50, 0, 2, 5, seed=1), ShardedOrder(50, 1, 2, 5, seed=1)
    a.set_epoch(1)
    b.set_epoch(1)
    assert (a.permutation() == b.permutation()).all()
    first = a.permutation().copy()
    a.set_epoch(2)
    assert not (a.permutation() == first).all()


def test_resume_mid_epoch_continues_the_same_order():
    full = [np.concatenate(s) for s in _shards(100, 2, 10, epoch=4)]
    rest = [np.concatenate(s) for s in _shards(100, 2, 10, epoch=4, start=40)]
    for rank in range(2):
        assert (full[rank][20:] == rest[rank]).all()


def test_resume_on_a_different_world_size_covers_the_rest_of_the_epoch():
    done = np.concatenate([b for s in _shards(100, 2, 10, epoch=1) for b in s[:2]])
    rest = np.concatenate([b for s in _shards(100, 4, 5, epoch=1, start=40) for b in s])
    assert sorted(np.concatenate([done, rest])) == list(range(100))


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        ShardedOrder(0, 0, 1, 4)
