"""The world's layout (stages x replicas) and the pipeline schedules, without any process."""
from __future__ import annotations

from collections import deque

import pytest

from hvdtrain.core.layout import Layout, LayoutError
from hvdtrain.core.pipeline_schedule import BACKWARD, FORWARD, peak_saved, stage_actions


def test_ranks_are_stage_major_and_every_group_is_known():
    layouts = [Layout.for_world(6, rank, pipeline=3) for rank in range(6)]
    assert [(lay.stage, lay.data_rank) for lay in layouts] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    middle = layouts[3]
    assert (middle.data_size, middle.data_rank, middle.world_size) == (2, 1, 6)
    assert (middle.previous_stage_rank, middle.next_stage_rank) == (1, 5)
    assert layouts[0].previous_stage_rank is None and layouts[5].next_stage_rank is None
    assert middle.data_group() == [2, 3]
    assert middle.data_groups() == [[0, 1], [2, 3], [4, 5]]
    assert Layout.for_world(4, 3).describe() == "1 pipeline stage x 4 data replicas"


def test_a_world_that_is_not_stages_times_replicas_is_refused_naming_the_numbers():
    with pytest.raises(LayoutError, match=r"3 workers cannot form model replicas of 2 pipeline stages.*3 is not a "
                                          r"multiple of 2.*-np 2"):
        Layout.for_world(3, 0, pipeline=2)
    with pytest.raises(LayoutError, match=r"6 workers cannot form model replicas of 4 tensor slices: the workers must "
                                          r"be 4 tensor slices x data replicas.*-np 4"):
        Layout.for_world(6, 0, tensor=4)
    with pytest.raises(LayoutError, match="rank 4 is outside a world of 4"):
        Layout(2, 2, 4)


def test_tensor_slices_are_innermost_and_each_group_is_known():
    layouts = [Layout.for_world(8, rank, pipeline=2, tensor=2) for rank in range(8)]
    assert [(lay.stage, lay.data_rank, lay.tensor_rank) for lay in layouts[:4]] == \
        [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    five = layouts[5]  # stage 1, replica 0, slice 1
    assert (five.stage, five.data_rank, five.tensor_rank, five.part, five.parts) == (1, 0, 1, 3, 4)
    assert five.tensor_group() == [4, 5] and five.data_group() == [5, 7]
    assert five.previous_stage_rank == 1 and layouts[1].next_stage_rank == 5
    assert layouts[0].data_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layouts[0].tensor_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [Layout.for_world(4, r, tensor=2).data_group() for r in range(4)] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    assert Layout.for_world(4, 0, tensor=2).describe() == "1 pipeline stage x 2 data replicas x 2 tensor slices"


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("stages", "micro_batches"), [(2, 1), (2, 4), (3, 2), (4, 8), (5, 3)])
def test_every_schedule_runs_each_pass_once_and_never_deadlocks(schedule, stages, micro_batches):
    plans = [deque(stage_actions(schedule, s, stages, micro_batches)) for s in range(stages)]
    for plan in plans:
        assert sorted((a.kind, a.micro_batch) for a in plan) == sorted(
            (kind, m) for kind in (FORWARD, BACKWARD) for m in range(micro_batches))
    # Sends never block; a receive waits for the next message on its link, which must be the one it wants.
    activations = [deque() for _ in range(stages)]  # activations[s]: messages into stage s from s - 1
    gradients = [deque() for _ in range(stages)]  # gradients[s]: messages into stage s from s + 1
    while any(plans):
        moved = False
        for s, plan in enumerate(plans):
            if not plan:
                continue
            action = plan[0]
            inbox = activations[s] if action.kind == FORWARD else gradients[s]
            needs_message = (action.kind == FORWARD and s > 0) or (action.kind == BACKWARD and s < stages - 1)
            if needs_message and not inbox:
                continue
            if needs_message:
                assert inbox.popleft() == action.micro_batch, "messages arrive in the order they are wanted"
            plan.popleft()
            if action.kind == FORWARD and s < stages - 1:
                activations[s + 1].append(action.micro_batch)
            if action.kind == BACKWARD and s > 0:
                gradients[s - 1].append(action.micro_batch)
            moved = True
        assert moved, f"deadlock: {[list(p)[:1] for p in plans]}"


@pytest.mark.parametrize(("stages", "micro_batches"), [(2, 8), (4, 8), (4, 2), (3, 16)])
def test_1f1b_holds_at_most_the_stages_ahead_while_gpipe_holds_every_micro_batch(stages, micro_batches):
    for stage in range(stages):
        assert peak_saved(stage_actions("1f1b", stage, stages, micro_batches)) == min(stages - stage, micro_batches)
        assert peak_saved(stage_actions("gpipe", stage, stages, micro_batches)) == micro_batches


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule must be one of"):
        stage_actions("interleaved", 0, 2, 4)
