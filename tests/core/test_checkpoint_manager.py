import pytest

from hvdtrain.core.checkpoint import CheckpointError, CheckpointManager, part_name
from hvdtrain.core.checkpoint_io import read_header


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


def _save_stages(manager, epoch, step, stages=2, score=None):
    """A pipeline checkpoint as the stages and rank 0 write it: parts first, then the manifest."""
    checkpoint = manager.directory_for(epoch, step)
    written = [manager.save_part(checkpoint, part_name(stage), f"stage {stage} at {step}".encode(), {"stage": stage})
               for stage in range(stages)]
    parts = {path.name: read_header(path)["payload_sha256"] for path in written}
    return manager.save_manifest(checkpoint, b"manifest", parts, epoch=epoch, global_step=step, score=score)


def test_a_checkpoint_of_stage_parts_is_a_directory_kept_pruned_and_verified_like_a_file(tmp_path):
    from hvdtrain.core.checkpoint import MANIFEST

    manager = CheckpointManager(tmp_path, keep_last=2, keep_best=0)
    for step in (10, 20, 30):
        _save_stages(manager, step // 10, step)
    assert [c.path.name for c in manager.checkpoints()] == ["ckpt-epoch0002-step00000020",
                                                            "ckpt-epoch0003-step00000030"]
    newest = manager.checkpoints()[-1]
    assert sorted(newest.parts) == ["stage000.ckpt", "stage001.ckpt"]
    info, payload = manager.load_latest()
    assert info.path == newest.path and payload == b"manifest"

    # A part this rank cannot see (no shared file system) fails the save instead of committing it.
    with pytest.raises(CheckpointError, match="does not see it: every rank must reach the checkpoint directory"):
        manager.save_manifest(manager.directory_for(9, 90), b"manifest", {"stage000.ckpt": "0" * 64}, epoch=9,
                              global_step=90)

    # A save cut short before its manifest is not a checkpoint, and the next save clears it away.
    cut_short = manager.directory_for(4, 40)
    manager.save_part(cut_short, part_name(0), b"orphan", {"stage": 0})
    assert manager.load_latest()[0].path == newest.path
    _save_stages(manager, 5, 50)
    assert not cut_short.exists()

    # A corrupted or missing part makes resume fall back to the checkpoint before it.
    part = manager.checkpoints()[-1].path / "stage001.ckpt"
    part.write_bytes(part.read_bytes()[:-3])
    assert manager.load_latest()[0].path == newest.path
    (newest.path / "stage000.ckpt").unlink()
    assert manager.load_latest() is None
    assert (newest.path / MANIFEST).is_file()
