"""TensorFlowAdapter in one process: state I/O, learning rates, RNG, serialization; and data sharding."""
from __future__ import annotations

import random

import keras
import numpy as np
import pytest
import tensorflow as tf

import hvdtrain.tensorflow as htf
from hvdtrain.core.adapter import FrameworkAdapter
from hvdtrain.core.backend import SerialBackend
from hvdtrain.tensorflow.adapter import model_variables
from hvdtrain.tensorflow.data import ShardedArrays, contiguous_shard


def model_and_optimizer(hidden: int = 6, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    return model, keras.optimizers.Adam(learning_rate=0.01)


def train_a_little(model, optimizer):
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    model.fit(np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32), epochs=2, verbose=0)


def test_adapter_implements_the_core_protocol():
    adapter = htf.TensorFlowAdapter(SerialBackend())
    missing = [name for name in FrameworkAdapter.__annotations__ | vars(FrameworkAdapter)
               if not name.startswith("_") and not hasattr(adapter, name)]
    assert not missing
    assert set(adapter.versions()) == {"tensorflow", "keras", "horovod"}


def test_state_round_trip_restores_weights_optimizer_slots_and_dropout_seed():
    adapter = htf.TensorFlowAdapter(SerialBackend())
    model, optimizer = model_and_optimizer(seed=0)
    train_a_little(model, optimizer)
    state = adapter.deserialize(adapter.serialize(adapter.state_dict(model, optimizer)))

    fresh, fresh_optimizer = model_and_optimizer(seed=1)
    adapter.load_state_dict(fresh, fresh_optimizer, state)
    for a, b in zip(model_variables(model), model_variables(fresh)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(fresh_optimizer.variables) == len(optimizer.variables) > 2  # matched by position, not name
    for a, b in zip(optimizer.variables, fresh_optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any("seed_generator" in path for path in state["model"]["paths"])
    assert not any(path.startswith(("loss/", "mae/", "compile_metrics")) for path in state["model"]["paths"])


def test_loading_into_a_different_model_or_from_torch_state_fails_with_the_fix():
    adapter = htf.TensorFlowAdapter(SerialBackend())
    model, optimizer = model_and_optimizer(hidden=6)
    state = adapter.state_dict(model, optimizer)
    other, other_optimizer = model_and_optimizer(hidden=7)
    with pytest.raises(ValueError, match="build the same model"):
        adapter.load_state_dict(other, other_optimizer, state)
    with pytest.raises(ValueError, match="resume it with the framework adapter that wrote it"):
        adapter.load_state_dict(model, optimizer, {"model": {}, "optimizer": {}})
    with pytest.raises(ValueError, match="has no variables yet: build it first"):
        adapter.state_dict(keras.Sequential([keras.layers.Dense(2)]), None)


def test_learning_rates_of_a_variable_and_of_a_schedule():
    adapter = htf.TensorFlowAdapter(SerialBackend())
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    adapter.set_learning_rates(optimizer, [0.025])
    assert adapter.get_learning_rates(optimizer) == [pytest.approx(0.025)]
    scheduled = keras.optimizers.SGD(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5))
    assert adapter.get_learning_rates(scheduled) == [pytest.approx(0.1)]
    with pytest.raises(TypeError, match=r"is a schedule \(ExponentialDecay\), which cannot be set to a value"):
        adapter.set_learning_rates(scheduled, [0.05])
    adapter.rescale_learning_rates(optimizer, 2.0)
    assert adapter.get_learning_rates(optimizer) == [pytest.approx(0.05)]
    adapter.rescale_learning_rates(scheduled, 2.0)  # DistributedOptimizer scales a schedule by this job's size
    assert adapter.get_learning_rates(scheduled) == [pytest.approx(0.1)]


def test_rng_state_round_trip_covers_python_numpy_tf_and_keras_generators():
    adapter = htf.TensorFlowAdapter(SerialBackend())
    keras.random.uniform((1,))  # creates Keras' global seed generator
    state = adapter.deserialize(adapter.serialize(adapter.rng_state()))

    def draw():
        return (random.random(), np.random.rand(), float(tf.random.get_global_generator().uniform(())),
                float(keras.random.uniform(())[()]))

    first = draw()
    adapter.set_rng_state(state)
    assert draw() == first


@pytest.mark.parametrize("size", [1, 2, 3])
def test_sharded_arrays_give_equal_steps_and_every_sample_once(size):
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50)
    shards = [ShardedArrays((x, y), 4, rank, size, seed=3) for rank in range(size)]
    for epoch in (0, 1):
        seen = []
        for shard in shards:
            shard.set_epoch(epoch)
            batches = list(shard)
            assert len(batches) == shards[0].steps_per_epoch
            for (bx, by), _ in batches:
                np.testing.assert_array_equal(bx[:, 0], by)
                seen += by.tolist()
        assert sorted(seen) == list(range(50))
    assert [local for local, _ in shards[0].step_sizes] == [len(b[1]) for b, _ in iter_epoch(shards[0], 0)]


def iter_epoch(shard, epoch):
    shard.set_epoch(epoch)
    return list(shard)


def test_fit_dataset_runs_epochs_back_to_back_from_the_chosen_epoch():
    x = np.arange(10, dtype=np.float32)[:, None]
    data = ShardedArrays((x, np.arange(10)), 4, 0, 1, seed=1)
    batches = list(data.dataset(1).take(2 * data.steps_per_epoch))
    expected = iter_epoch(data, 1) + iter_epoch(data, 2)
    for (bx, by), ((ex, ey), _) in zip(batches, expected):
        np.testing.assert_array_equal(bx.numpy(), ex)
        np.testing.assert_array_equal(by.numpy(), ey)


def test_fit_dataset_of_a_resumed_epoch_holds_the_rest_of_its_permutation_resharded():
    x = np.arange(23, dtype=np.float32)[:, None]
    shards = [ShardedArrays((x, np.arange(23)), 3, rank, 2, seed=4) for rank in range(2)]
    seen = []
    for shard in shards:
        shard.set_epoch(1, 6)  # 6 samples done, e.g. by 3 workers' first global batch of 2 each
        rest = [by.numpy().tolist() for _, by in shard.dataset(1, samples_seen=6, epochs=1)]
        assert len(rest) == len(shard) == 3  # 17 samples left: global batches of 6, 6 and 5
        assert rest == [by.tolist() for (_, by), _ in shard]
        assert [len(b) for b in rest] == [local for local, _ in shard.step_sizes]
        seen += [sample for batch in rest for sample in batch]
    shards[0].order.set_epoch(1)
    assert sorted(seen) == sorted(shards[0].order.permutation()[6:].tolist())


def test_contiguous_validation_shards_cover_the_data_once():
    x = np.arange(11)
    parts = [contiguous_shard((x, x), rank, 3) for rank in range(3)]
    assert sum(count for _, count in parts) == 11
    assert np.concatenate([shard[0] for shard, _ in parts]).tolist() == list(range(11))


def test_shard_dataset_takes_every_size_th_element():
    class Two(SerialBackend):
        rank, size = 1, 2

    ds = htf.shard_dataset(tf.data.Dataset.range(7), Two())
    assert [int(v) for v in ds] == [1, 3, 5]
