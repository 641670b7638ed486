"""Mixed precision for Keras 3 models: the dtype policy, and loss scaling for float16."""
from __future__ import annotations

from typing import Any

import keras

from hvdtrain.tensorflow.optimizer import is_distributed

POLICIES = {"32": "float32", "bf16-mixed": "mixed_bfloat16", "16-mixed": "mixed_float16"}
_COMPUTE_DTYPES = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}


def set_precision(precision: str) -> None:
    """Build the models that follow in ``precision`` ("32", "bf16-mixed" or "16-mixed").

    Keras fixes a layer's dtype policy when the layer is built, so call this before building the model.
    """
    if precision not in POLICIES:
        raise ValueError(f"precision must be one of {list(POLICIES)} (got {precision!r})")
    keras.mixed_precision.set_dtype_policy(POLICIES[precision])


def check_model_precision(model: keras.Model, precision: str) -> None:
    """Raise, with the fix, unless ``model`` computes in the dtype that a mixed ``precision`` asks for.

    "32" takes the model as built (float32, or float64 for numerics).
    """
    if precision == "32":
        return
    expected = _COMPUTE_DTYPES[precision]
    actual = getattr(model, "compute_dtype", "float32")
    if actual != expected:
        raise ValueError(f"precision={precision!r} needs a model that computes in {expected}, but {model.name!r} "
                         f"computes in {actual}: call hvdtrain.tensorflow.set_precision({precision!r}) (Keras' "
                         f"{POLICIES[precision]!r} policy) before building the model")


def with_loss_scaling(optimizer: keras.optimizers.Optimizer, precision: str) -> keras.optimizers.Optimizer:
    """For float16, ``optimizer`` inside a ``LossScaleOptimizer`` (unless it already is one).

    Raises:
        ValueError: a float16 run given an already distributed optimizer without loss scaling.
    """
    if precision != "16-mixed" or is_loss_scaled(optimizer):
        return optimizer
    if is_distributed(optimizer):
        raise ValueError("precision='16-mixed' needs loss scaling, but the optimizer is already distributed "
                         "without it: pass the plain optimizer (hvdtrain adds the LossScaleOptimizer), or wrap it "
                         "in keras.optimizers.LossScaleOptimizer before DistributedOptimizer")
    return keras.optimizers.LossScaleOptimizer(optimizer)


def is_loss_scaled(optimizer: Any) -> bool:
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
