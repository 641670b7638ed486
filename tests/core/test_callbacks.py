import math

import pytest

from hvdtrain.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    LearningRateSchedule,
    MetricAverage,
    ModelCheckpoint,
    Order,
    ResumeFromCheckpoint,
    StopOnNonFinite,
    cosine_decay,
    step_decay,
)
from hvdtrain.core.context import TrainContext
from hvdtrain.core.progress import Progress


class Trace(Callback):
    def __init__(self, name, order, log):
        self.name, self.order, self.log = name, order, log

    def on_epoch_end(self, ctx):
        self.log.append(self.name)


def test_callbacks_run_in_explicit_order_regardless_of_registration():
    log = []
    callbacks = CallbackList([Trace("checkpoint", Order.CHECKPOINT, log), Trace("user", Order.USER, log),
                              Trace("metrics", Order.METRICS, log), Trace("user2", Order.USER, log)])
    callbacks.on_epoch_end(TrainContext())
    assert log == ["metrics", "user", "user2", "checkpoint"]


def test_builtin_order_puts_resume_first_metrics_before_readers_and_checkpoint_last(tmp_path):
    built = CallbackList([ModelCheckpoint(tmp_path), EarlyStopping(), StopOnNonFinite(), MetricAverage(),
                          ResumeFromCheckpoint(tmp_path), CSVLogger(tmp_path / "m.csv")])
    names = [type(c).__name__ for c in built]
    assert names == ["ResumeFromCheckpoint", "MetricAverage", "StopOnNonFinite", "EarlyStopping",
                     "CSVLogger", "ModelCheckpoint"]


def test_non_callback_is_rejected_with_the_fix():
    with pytest.raises(TypeError, match=r"lacks on_train_begin.*subclass hvdtrain\.Callback"):
        CallbackList([object()])


def test_early_stopping_requests_stop_after_patience_and_agrees():
    stopper, ctx = EarlyStopping("val_loss", patience=2), TrainContext()
    for value in [1.0, 0.9, 0.95, 0.91]:
        ctx.logs = {"val_loss": value}
        stopper.on_epoch_end(ctx)
    assert not ctx.stop_training, "a wish is not a decision until the ranks agree"
    assert ctx.agree_on_stop() and ctx.stop_training
    assert "val_loss did not improve for 2 epochs" in ctx.stop_reason


def test_early_stopping_names_missing_metric_and_alternatives():
    ctx = TrainContext(logs={"loss": 1.0, "val_accuracy": 0.5})
    with pytest.raises(KeyError, match="'val_loss' is not in the logs; available: loss, val_accuracy"):
        EarlyStopping("val_loss").on_epoch_end(ctx)


def test_stop_on_non_finite_stops_at_once():
    ctx = TrainContext(logs={"loss": math.inf}, progress=Progress(step=7))
    StopOnNonFinite().on_batch_end(ctx)
    assert ctx.stop_training and "non-finite loss (inf) on rank 0 at step 7" in ctx.stop_reason


def test_warmup_factor_ramps_from_one_over_size_to_one():
    schedule = LearningRateSchedule(warmup_epochs=4)
    assert schedule.factor(0.0, size=4) == pytest.approx(0.25)
    assert schedule.factor(2.0, size=4) == pytest.approx(0.625)
    assert schedule.factor(4.0, size=4) == 1.0


def test_schedules_compose_with_warmup():
    assert LearningRateSchedule(step_decay([10, 20], 0.1)).factor(25, size=1) == pytest.approx(0.01)
    assert cosine_decay(10)(5) == pytest.approx(0.5)
    assert LearningRateSchedule(cosine_decay(10), warmup_epochs=2).factor(1, size=2) == pytest.approx(
        0.75 * cosine_decay(10)(1))


def test_metric_average_in_one_process_keeps_values():
    ctx = TrainContext(logs={"loss": 0.5, "acc": 0.25})
    MetricAverage().on_epoch_end(ctx)
    assert ctx.logs == {"loss": 0.5, "acc": 0.25}


def test_callback_states_round_trip_by_class_and_position():
    first, second = EarlyStopping(patience=3), EarlyStopping(monitor="loss", patience=3)
    first.wait, second.wait = 1, 2
    states = CallbackList([first, second]).state_dict()
    fresh = CallbackList([EarlyStopping(), EarlyStopping(monitor="loss")])
    fresh.load_state_dict(states)
    assert [c.wait for c in fresh] == [1, 2]


def test_csv_logger_adds_columns_without_losing_rows(tmp_path):
    logger, path = CSVLogger(tmp_path / "m.csv"), tmp_path / "m.csv"
    logger.on_epoch_end(TrainContext(logs={"loss": 1.0}))
    logger.on_epoch_end(TrainContext(progress=Progress(epoch=1), logs={"loss": 0.5, "val_loss": 0.7}))
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,global_step,loss,val_loss"
    assert lines[1:] == ["1,0,1.0,", "2,0,0.5,0.7"]


def test_csv_logger_keeps_one_row_per_epoch_when_epochs_run_again(tmp_path):
    # A resume from an older checkpoint, or an elastic job rolled back to its last commit.
    logger, path = CSVLogger(tmp_path / "m.csv"), tmp_path / "m.csv"
    for epoch, loss in [(0, 1.0), (1, 0.5), (2, 0.4), (1, 0.6), (2, 0.3)]:
        logger.on_epoch_end(TrainContext(progress=Progress(epoch=epoch), logs={"loss": loss}))
    assert path.read_text().splitlines() == ["epoch,global_step,loss", "1,0,1.0", "2,0,0.6", "3,0,0.3"]


def test_tensorboard_logger_writes_scalars_tensorboard_can_read(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hvdtrain.callbacks import TensorBoardLogger

    logger, ctx = TensorBoardLogger(tmp_path), TrainContext(logs={"loss": 0.25, "val_accuracy": 0.9})
    logger.on_train_begin(ctx)
    logger.on_epoch_end(ctx)
    logger.on_train_end(ctx)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["epoch/loss", "epoch/val_accuracy"]
    assert events.Scalars("epoch/loss")[0].value == 0.25


def test_progress_resumes_from_its_own_point_and_from_former_counter_names():
    progress = Progress()
    for updated in (False, True, False):
        progress.start_batch()
        progress.finish_batch(global_samples=32, updated=updated)
    point = progress.resume_point()
    assert point == {"epoch": 0, "batch": 3, "step": 1, "batches_run": 3, "samples_in_epoch": 96}
    resumed = Progress()
    resumed.load(point)
    assert resumed.resume_point() == point
    # A checkpoint of an earlier hvdtrain: "micro_batches", and before it the 0.1.0 names without one.
    older = Progress()
    older.load({**{k: v for k, v in point.items() if k != "batches_run"}, "micro_batches": 3})
    assert older.batches_run == 3
    oldest = Progress()
    oldest.load({"epoch": 2, "batch_index": 4, "global_step": 9, "samples_seen_in_epoch": 64})
    assert (oldest.epoch, oldest.batch, oldest.step, oldest.batches_run, oldest.samples_in_epoch) == (2, 4, 9, 9, 64)
