"""The safe checkpoint payload: what round-trips, what is refused, and that a planted pickle never runs."""
from __future__ import annotations

import io
import json
import math
import pickle
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest

from hvdtrain.core.checkpoint_io import CheckpointError
from hvdtrain.core.state_codec import (
    MAGIC,
    LegacyCheckpointError,
    UnsafeCheckpointError,
    converted_path,
    decode_state,
    encode_state,
    legacy_message,
)
from tests.checkpoint_files import Touch, pickled_section_payload


def test_nested_python_values_and_arrays_round_trip_with_their_types():
    metadata_dict = OrderedDict([("w", np.ones((2, 3), np.float32))])
    metadata_dict._metadata = {"": {"version": 2}}
    state = {
        "ints": {0: {"step": 3}, 1: {"step": 4}},           # optimizer.state_dict()["state"]
        "tuple_key": {(1, "a"): "t"},
        "betas": (0.9, 0.999), "nested": [(1, [2, (3,)]), None, True, "s"],
        "non_finite": [math.inf, -math.inf], "nan": math.nan,
        "$looks_like_a_tag": {"$array": 0},
        "numpy_scalars": [np.float32(0.5), np.int64(7), np.bool_(True)],
        "module_state": metadata_dict,
        "arrays": [np.arange(6, dtype=np.uint32).reshape(2, 3), np.array(5, np.int64), np.array([True, False]),
                   np.arange(3, dtype=np.float32).astype(ml_dtypes.bfloat16), np.zeros((0, 4), np.float64)],
    }
    back = decode_state(encode_state(state))

    assert back["ints"] == {0: {"step": 3}, 1: {"step": 4}}
    assert back["tuple_key"] == {(1, "a"): "t"}
    assert back["betas"] == (0.9, 0.999) and type(back["betas"]) is tuple
    assert back["nested"] == [(1, [2, (3,)]), None, True, "s"]
    assert back["non_finite"] == [math.inf, -math.inf] and math.isnan(back["nan"])
    assert back["$looks_like_a_tag"] == {"$array": 0}
    assert back["numpy_scalars"] == [0.5, 7, True]
    assert isinstance(back["module_state"], OrderedDict)
    assert back["module_state"]._metadata == {"": {"version": 2}}
    np.testing.assert_array_equal(back["module_state"]["w"], np.ones((2, 3), np.float32))
    for original, restored in zip(state["arrays"], back["arrays"]):
        assert restored.dtype == original.dtype and restored.shape == original.shape
        np.testing.assert_array_equal(restored.astype(np.float64), original.astype(np.float64))


def test_the_structure_is_plain_json_after_the_magic_line():
    payload = encode_state({"progress": {"epoch": 2}, "w": np.zeros(3)})
    assert payload.startswith(MAGIC)
    index = json.loads(payload[len(MAGIC):payload.index(b"\n", len(MAGIC))])
    assert index["tree"] == {"progress": {"epoch": 2}, "w": {"$array": 0}}
    assert [s["tag"] for s in index["sections"]] == ["$array"]


def test_a_value_without_a_safe_encoding_is_refused_naming_where_it_is():
    with pytest.raises(TypeError, match=r"state\['callbacks'\]\['Seen:0'\]\['ids'\] is a builtins.set, which a "
                                        r"checkpoint cannot hold without pickle"):
        encode_state({"callbacks": {"Seen:0": {"ids": {1, 2}}}})
    with pytest.raises(TypeError, match="holds Python objects"):
        encode_state({"a": np.array([object()], dtype=object)})


def test_a_pickle_payload_is_refused_and_the_command_in_it_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model_optimizer": Touch(marker)})
    with pytest.raises(LegacyCheckpointError, match=r"is a Python pickle: the format of hvdtrain 0\.1\.0"):
        decode_state(payload)
    assert not marker.exists()
    pickle.loads(payload)  # the control: the planted payload does run its command when unpickled
    assert marker.exists()


def test_a_pickled_array_section_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickled_section_payload(marker, "numpy")
    with pytest.raises(UnsafeCheckpointError, match="array section holds pickled objects"):
        decode_state(payload)
    assert not marker.exists()
    section = payload[payload.index(b"\n", len(MAGIC)) + 1:]
    np.load(io.BytesIO(section), allow_pickle=True)["a0"]  # the control: loading it unsafely runs the command
    assert marker.exists()


@pytest.mark.parametrize(("tree", "sections", "message"), [
    ({"$array": 3}, None, r"damaged at state .*not in its section"),
    ({"x": {"$what": 1}}, [], r"damaged at state\['x'\] .*unknown tag '\$what'"),
    ({"$tensor": 0}, [{"tag": "$tensor", "bytes": 0, "meta": {}}], "holds tensor leaves, which this framework "
                                                                   "adapter cannot read"),
])
def test_a_damaged_structure_is_a_checkpoint_error(tree, sections, message):
    if sections is None:
        payload = encode_state({"w": np.zeros(1)})
        index = json.loads(payload[len(MAGIC):payload.index(b"\n", len(MAGIC))])
        body = payload[payload.index(b"\n", len(MAGIC)) + 1:]
        payload = MAGIC + json.dumps({**index, "tree": tree}).encode() + b"\n" + body
    else:
        payload = MAGIC + json.dumps({"sections": sections, "tree": tree}).encode() + b"\n"
    with pytest.raises(CheckpointError, match=message):
        decode_state(payload)


def test_unknown_bytes_are_not_mistaken_for_a_legacy_checkpoint():
    with pytest.raises(CheckpointError, match="in no format hvdtrain knows") as caught:
        decode_state(b"GARBAGE")
    assert not isinstance(caught.value, LegacyCheckpointError)


def test_the_legacy_message_names_the_conversion_command_and_the_new_file(tmp_path):
    old = tmp_path / "ckpt-epoch0001-step00000010.ckpt"
    message = legacy_message(old, LegacyCheckpointError("its payload is a Python pickle"))
    assert f"`hvdtrain convert-checkpoint {old}`" in message
    assert "ckpt-epoch0001-step00000010.safe.ckpt beside it" in message
    assert converted_path(old) == tmp_path / "ckpt-epoch0001-step00000010.safe.ckpt"
