import pytest

from hvdtrain.core.checkpoint import CheckpointManager


def _save(manager, step, score=None):
    return manager.save(f"state {step}".encode(), epoch=step // 10, global_step=step, score=score)


def test_keeps_last_n_and_best_k(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, keep_best=1, mode="max")
    for step, score in [(10, 0.5), (20, 0.9), (30, 0.6), (40, 0.7), (50, 0.65)]:
        _save(manager, step, score)
    assert [i.global_step for i in manager.checkpoints()] == [20, 40, 50]
    assert manager.best()[0].global_step == 20


def test_load_latest_falls_back_past_a_corrupted_file(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=3)
    _save(manager, 10)
    newest = _save(manager, 20)
    newest.write_bytes(newest.read_bytes()[:-3])
    info, payload = manager.load_latest()
    assert (info.global_step, payload) == (10, b"state 10")
    assert "is truncated" in caplog.text and "falling back" in caplog.text
    assert newest.exists(), "a damaged checkpoint is reported, never deleted"


def test_empty_directory_has_nothing_to_resume(tmp_path):
    assert CheckpointManager(tmp_path / "none").load_latest() is None


def test_non_finite_scores_are_never_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1, keep_best=1, mode="min")
    _save(manager, 10, 0.3)
    _save(manager, 20, float("nan"))
    assert manager.best()[0].global_step == 10


@pytest.mark.parametrize("kwargs, message", [({"keep_last": 0}, "keep_last must be >= 1"),
                                             ({"keep_best": -1}, "keep_best must be >= 0"),
                                             ({"mode": "up"}, "mode must be 'min' or 'max'")])
def test_bad_policy_is_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CheckpointManager(tmp_path, **kwargs)
