"""Elastic training's TensorFlow parts in one process: lost-peer errors, the world a compiled step was
traced for, inputs that cannot be re-sharded. (The real thing runs in test_parallel_elastic.py.)"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from horovod.common.exceptions import HorovodInternalError

import hvdtrain.tensorflow as htf
from hvdtrain.tensorflow.backend import SerialBackend


class ElasticWorld(SerialBackend):
    """An elastic job of ``size`` identical ranks, seen from rank 0: a sum over ranks is ``size`` times ours.

    As in Horovod, the sum in a compiled step counts the ranks there are when it runs.
    """

    elastic = True

    def __init__(self, size: int) -> None:
        self.size, self.ranks = size, tf.Variable(size)

    def resize(self, size: int) -> None:
        self.size = size
        self.ranks.assign(size)

    def grouped_allreduce(self, tensors, compression, prescale_factor, postscale_factor):
        return [t * prescale_factor * postscale_factor * tf.cast(self.ranks, t.dtype) for t in tensors]


def data(n=64, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 5).astype(np.float32)
    return x, (x[:, :2].sum(1) > 0).astype(np.int64)


def make_trainer(backend, train_data=None, learning_rate=0.1, scale_lr=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    return htf.Trainer(model, keras.optimizers.SGD(learning_rate),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       train_data=data() if train_data is None else train_data, backend=backend, batch_size=8,
                       scale_lr=scale_lr, progress=False)


def test_a_lost_peer_in_a_compiled_step_becomes_the_error_horovods_elastic_run_recovers_from(backend):
    def lost_peer():
        raise tf.errors.UnknownError(None, None, "Horovod has been shut down. [[{{node HorovodGroupedAllreduce_x_0}}]]")

    with pytest.raises(HorovodInternalError):
        backend.recoverable(lost_peer)

    def other_failure():
        raise tf.errors.UnknownError(None, None, "a failure of the user's own op")

    with pytest.raises(tf.errors.UnknownError):
        backend.recoverable(other_failure)


class NoState:
    """Nothing to commit: the elastic run alone."""

    def save(self):
        pass

    def restore(self):
        pass

    def sync(self):
        pass

    def adopt_world(self):
        pass


def test_another_tensorflow_error_in_the_elastic_run_is_raised_not_swallowed(backend):
    # Horovod's own TensorFlow elastic run returns None for an UnknownError it does not recognize.
    def failing_training():
        raise tf.errors.UnknownError(None, None, "a failure of the user's own op")

    with pytest.raises(tf.errors.UnknownError, match="the user's own op"):
        backend.run_elastic(failing_training, NoState())
    assert backend.run_elastic(lambda: "done", NoState()) == "done"


def test_after_a_world_change_the_trainer_shards_anew_and_its_step_averages_over_the_new_size():
    world = ElasticWorld(2)
    trainer = make_trainer(world)
    x, y = data(8, seed=1)
    one = tf.constant(1.0, tf.float64)
    start = trainer.model.get_weights()

    def update():
        trainer.model.set_weights(start)
        trainer.steps.sync(x, y, one)
        return [after - before for after, before in zip(trainer.model.get_weights(), start)]

    on_two = update()
    world.resize(3)
    trainer._after_elastic_load(2)
    on_three = update()  # traced for 2 workers, the step would apply 3/2 of the mean gradient
    for a, b in zip(on_three, on_two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert (trainer.train.order.size, len(trainer.train)) == (3, 3), "64 samples, 8 per rank and step, 3 ranks"


def test_after_a_world_change_a_keras_schedule_scaled_by_the_world_size_takes_the_new_size():
    world = ElasticWorld(2)
    trainer = make_trainer(world, learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.5),
                           scale_lr=True)
    rate = trainer.adapter.get_learning_rates(trainer.optimizer)[0]
    world.resize(3)
    trainer._after_elastic_load(2)
    assert trainer.adapter.get_learning_rates(trainer.optimizer)[0] == pytest.approx(rate * 3 / 2)


def test_elastic_training_refuses_a_dataset_it_could_not_reshard():
    dataset = tf.data.Dataset.from_tensor_slices(data()).batch(8)
    with pytest.raises(ValueError, match="elastic training needs train_data as in-memory arrays"):
        make_trainer(ElasticWorld(2), train_data=dataset)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    with pytest.raises(ValueError, match="elastic training needs x as in-memory arrays"):
        htf.fit(model, dataset, backend=ElasticWorld(2))
