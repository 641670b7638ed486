"""The TensorFlow / Keras 3 framework adapter: broadcast, state I/O, learning rates and RNG."""
from __future__ import annotations

import random
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hvdtrain.core.agreement import check_ranks_agree
from hvdtrain.core.state_codec import decode_state, encode_state
from hvdtrain.tensorflow.backend import TensorFlowBackend, default_backend
from hvdtrain.tensorflow.schedule import learning_rate_owner

STATE_FORMAT = "hvdtrain.tensorflow/1"


class TensorFlowAdapter:
    """Implements ``hvdtrain.core.adapter.FrameworkAdapter`` for Keras 3 models on TensorFlow.

    The model state is ``model.variables`` without metric variables: weights,
    non-trainable weights (e.g. batch-norm statistics) and the state of the
    layers' seed generators (e.g. ``Dropout``'s), so dropout masks resume
    exactly. The optimizer state is ``optimizer.variables``: iteration count,
    learning rate, slots (momentum, Adam moments) and hvdtrain's gradient
    accumulators. Variables are matched by position, so rebuild the same model
    and optimizer before loading.
    """

    name = "tensorflow"

    def __init__(self, backend: TensorFlowBackend) -> None:
        self.backend = backend

    def broadcast_state(self, model: keras.Model, optimizer: Any, root: int = 0) -> None:
        """Check that every rank has the same variables (count, shapes, dtypes), then broadcast ``root``'s.

        Variables are matched by position, as the broadcast and checkpoints match them, so
        Keras' auto-generated layer names may differ between ranks.

        Raises:
            StateMismatchError: on every rank, naming the first variable that differs.
        """
        variables = state_variables(model, optimizer)
        check_ranks_agree(self.backend, variable_specs(variables), "model and optimizer", match_names=False)
        if self.backend.size > 1:
            # Horovod's broadcast needs the underlying tf.Variables, not Keras 3 wrappers.
            self.backend.broadcast_variables([v.value for v in variables], root)

    def state_dict(self, model: keras.Model, optimizer: Any) -> dict[str, Any]:
        state = {"format": STATE_FORMAT, "model": _snapshot(model_variables(model))}
        if optimizer is not None:
            build_optimizer(optimizer, model)
            state["optimizer"] = _snapshot(optimizer.variables)
            state["optimizer_class"] = type(optimizer).__name__
        return state

    def load_state_dict(self, model: keras.Model, optimizer: Any, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"this checkpoint holds {state.get('format', 'another framework')!r} state, not "
                             f"{STATE_FORMAT!r}; resume it with the framework adapter that wrote it")
        _restore(model_variables(model), state["model"], "model")
        if optimizer is not None and state.get("optimizer") is not None:
            build_optimizer(optimizer, model)
            _restore(optimizer.variables, state["optimizer"], f"optimizer ({state.get('optimizer_class')})")

    def get_learning_rates(self, optimizer: Any) -> list[float]:
        return [float(tf.convert_to_tensor(optimizer.learning_rate).numpy())]

    def set_learning_rates(self, optimizer: Any, rates: list[float]) -> None:
        variable = optimizer.learning_rate
        if not isinstance(variable, keras.Variable):
            schedule = type(learning_rate_owner(optimizer)._learning_rate).__name__
            raise TypeError(
                f"{type(optimizer).__name__}'s learning rate is a schedule ({schedule}), which cannot be set to a "
                "value. hvdtrain's warmup_epochs and lr_schedule multiply a Keras LearningRateSchedule instead; "
                "a callback that sets rates itself needs an optimizer with a float learning_rate.")
        variable.assign(float(rates[0]))

    def rescale_learning_rates(self, optimizer: Any, factor: float) -> None:
        """Multiply a float learning rate by ``factor``; a schedule already follows this job's world size.

        ``DistributedOptimizer`` scaled the schedule by this job's world size, and checkpoints hold only
        its position (``optimizer.iterations``), so it needs no rescaling.
        """
        if isinstance(optimizer.learning_rate, keras.Variable):
            self.set_learning_rates(optimizer, [rate * factor for rate in self.get_learning_rates(optimizer)])

    def rng_state(self) -> dict[str, Any]:
        """Python, NumPy, ``tf.random``'s global generator and Keras' global seed generator.

        Not covered: op-level seeds of stateful TF ops (``tf.random.uniform``
        inside a graph); layers' seed generators are part of the model state.
        """
        state = {"python": random.getstate(), "numpy": np.random.get_state(),
                 "tf_generator": tf.random.get_global_generator().state.numpy()}
        keras_seed = _keras_global_seed_generator()
        if keras_seed is not None:
            state["keras_seed"] = np.array(keras_seed.state.numpy())
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        tf.random.get_global_generator().state.assign(state["tf_generator"])
        keras_seed = _keras_global_seed_generator()
        if keras_seed is not None and "keras_seed" in state:
            keras_seed.state.assign(state["keras_seed"])

    def serialize(self, obj: Any) -> bytes:
        """A safe payload: JSON structure, NumPy arrays as ``.npz``."""
        return encode_state(obj)

    def deserialize(self, data: bytes) -> Any:
        """Decode ``serialize``'s payload; arrays are read with ``allow_pickle=False``, nothing is unpickled."""
        return decode_state(data)

    def versions(self) -> dict[str, str]:
        return {"tensorflow": tf.__version__, "keras": keras.__version__, "horovod": version("horovod")}


def broadcast_state(model: keras.Model, optimizer: Any = None, backend: TensorFlowBackend | None = None,
                    root: int = 0) -> None:
    """Make every rank's model (and optimizer) state equal to ``root``'s. Call before the first step.

    For hand-written loops; ``Trainer`` and ``fit`` do this for you.
    """
    if backend is None:
        backend = default_backend()
    TensorFlowAdapter(backend).broadcast_state(model, optimizer, root)


def model_variables(model: keras.Model) -> list[Any]:
    """The model's state: ``model.variables`` minus metric variables (built lazily, reset every epoch).

    Raises:
        ValueError: the model has no variables yet (not built).
    """
    if not model.variables:
        raise ValueError(f"model {model.name!r} has no variables yet: build it first (give it a keras.Input, "
                         "call model.build(input_shape), or call it on one batch)")
    metric_ids = {id(v) for metric in getattr(model, "metrics", []) for v in metric.variables}
    return [v for v in model.variables if id(v) not in metric_ids]


def build_optimizer(optimizer: Any, model: keras.Model) -> None:
    """Create the optimizer's variables now (Keras creates them lazily, at the first step)."""
    if not optimizer.built:
        optimizer.build(model.trainable_variables)


def state_variables(model: keras.Model, optimizer: Any = None) -> list[Any]:
    """Model variables, then the (built) optimizer's variables: what a broadcast must cover."""
    variables = model_variables(model)
    if optimizer is not None:
        build_optimizer(optimizer, model)
        variables += list(optimizer.variables)
    return variables


def variable_specs(variables: Sequence[Any]) -> list[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype) of each variable: what the initial broadcast sends, in its order."""
    return [(getattr(v, "path", v.name), tuple(int(d) for d in v.shape), str(v.dtype)) for v in variables]


def _snapshot(variables: Sequence[Any]) -> dict[str, list[Any]]:
    return {"paths": [getattr(v, "path", v.name) for v in variables],
            "values": [np.array(tf.convert_to_tensor(v).numpy()) for v in variables]}


def _restore(variables: Sequence[Any], snapshot: dict[str, list[Any]], what: str) -> None:
    values = snapshot["values"]
    if len(values) != len(variables):
        raise ValueError(f"the checkpoint's {what} state has {len(values)} variables but this {what} has "
                         f"{len(variables)}; build the same model and optimizer (same layers, same "
                         "backward_passes_per_step) as the run that wrote the checkpoint")
    for variable, value, path in zip(variables, values, snapshot["paths"]):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"checkpoint variable {path!r} has shape {tuple(value.shape)} but {what} variable "
                             f"{getattr(variable, 'path', variable.name)!r} has {tuple(variable.shape)}; build "
                             "the same model as the run that wrote the checkpoint")
    for variable, value in zip(variables, values):
        variable.assign(value)


def _keras_global_seed_generator() -> Any:
    # The generator keras.random uses when no seed is given; private to Keras, so read defensively.
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return None
    return global_state.get_global_attribute("global_seed_generator")
