"""The rank agreement before the initial broadcast: the first tensor that differs is named, with both shapes."""
from __future__ import annotations

from hvdtrain.core.agreement import check_ranks_agree, first_difference
from hvdtrain.core.backend import SerialBackend

MODEL = [("0.weight", (16, 10), "float32"), ("0.bias", (16,), "float32"), ("3.weight", (2, 16), "float32")]


def test_ranks_that_agree_pass():
    assert first_difference([MODEL, list(MODEL), list(MODEL)]) is None


def test_a_different_shape_names_the_tensor_and_both_shapes():
    other = [MODEL[0], ("0.bias", (17,), "float32"), MODEL[2]]
    message = first_difference([MODEL, other])
    assert message.startswith("ranks disagree on the model before the initial broadcast: tensor #1 is '0.bias' "
                              "with shape (16,) (float32) on rank 0 but '0.bias' with shape (17,) (float32) on rank 1.")
    assert "Every rank must build the same model" in message


def test_a_different_number_of_tensors_names_the_first_extra_one_and_the_counts():
    extra = [*MODEL, ("4.weight", (2, 2), "float32")]
    message = first_difference([MODEL, extra])
    assert "tensor #3 is missing on rank 0 but '4.weight' with shape (2, 2) (float32) on rank 1" in message
    assert "Rank 0 has 3 tensors and rank 1 has 4." in message


def test_the_first_rank_that_differs_is_named_and_dtypes_count():
    other = [("0.weight", (16, 10), "float64"), *MODEL[1:]]
    message = first_difference([MODEL, MODEL, other], what="model and optimizer")
    assert "on the model and optimizer" in message
    assert "(float32) on rank 0 but '0.weight' with shape (16, 10) (float64) on rank 2" in message


def test_names_count_only_when_asked():
    renamed = [("dense_7/kernel", (16, 10), "float32"), *MODEL[1:]]
    assert first_difference([MODEL, renamed], match_names=False) is None
    assert "'0.weight' with shape (16, 10) (float32) on rank 0 but 'dense_7/kernel'" in first_difference(
        [MODEL, renamed])


def test_one_worker_has_nothing_to_agree_on():
    check_ranks_agree(SerialBackend(), MODEL)
