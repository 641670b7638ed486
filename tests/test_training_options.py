"""Each training option is declared once: in TrainingOptions, which every entry point takes."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from hvdtrain.core.options import OptionsError, TrainingOptions

FIELDS = {f.name for f in dataclasses.fields(TrainingOptions)}


def keyword_names(func) -> set[str]:
    params = inspect.signature(func).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize(("entry", "framework_args"), [
    ("hvdtrain.torch:Trainer", {"metrics", "callbacks", "backend", "device", "num_workers", "options",
                                 "training_step", "validation_step", "lr_scheduler"}),
    ("hvdtrain.tensorflow:Trainer", {"metrics", "callbacks", "backend", "steps_per_epoch", "options"}),
    ("hvdtrain.tensorflow:fit", {"validation_data", "callbacks", "backend", "shuffle", "steps_per_epoch",
                                 "verbose", "options"}),
])
def test_keyword_arguments_are_the_options_plus_the_framework_arguments(entry, framework_args):
    module, name = entry.split(":")
    func = getattr(__import__(module, fromlist=[name]), name)
    assert keyword_names(func) == FIELDS | framework_args
    assert not FIELDS & framework_args


@pytest.mark.parametrize(("changes", "message"), [
    ({"epochs": 0}, "epochs must be >= 1 (got 0)"),
    ({"compression": "zip"}, "compression must be one of ['fp16', 'none'] (got 'zip')"),
    ({"op": "max"}, "op must be one of ['adasum', 'average', 'sum'] (got 'max')"),
    ({"keep_last": 0}, "keep_last must be >= 1 (got 0)"),
    ({"resume": True}, "resume=True needs checkpoint_dir="),
    ({"early_stopping_patience": 0}, "early_stopping_patience must be >= 1 or null (got 0)"),
])
def test_a_bad_option_is_named_with_its_value(changes, message):
    with pytest.raises(OptionsError) as caught:
        TrainingOptions(**changes)
    assert message in str(caught.value)
    assert caught.value.option == next(iter(changes))
