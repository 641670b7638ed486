"""The backend contract, written out as Protocols, and every backend checked against it member by member."""
from __future__ import annotations

import inspect
from typing import Protocol

import pytest

from hvdtrain.core import backend as core
from hvdtrain.engine.horovod_backend import HorovodBackendBase


def members(protocol: type) -> dict[str, object]:
    """The protocol's members, its parents' included (``Backend`` for the adapters' protocols)."""
    found: dict[str, object] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        found.update({name: value for name, value in vars(cls).items() if not name.startswith("_")})
    return found


def parameters(function: object) -> list[tuple[str, object, bool]]:
    """(name, kind, has a default) of each parameter after ``self``."""
    return [(p.name, p.kind, p.default is not p.empty) for p in
            list(inspect.signature(function).parameters.values())[1:]]


def contract_breaches(protocol: type, implementation: type) -> list[str]:
    breaches = []
    for name, declared in members(protocol).items():
        given = inspect.getattr_static(implementation, name, None)
        if given is None:
            breaches.append(f"{implementation.__name__} lacks {name}")
        elif callable(declared) and not isinstance(declared, property):
            if not callable(given) or parameters(declared) != parameters(given):
                breaches.append(f"{implementation.__name__}.{name}{inspect.signature(given)} differs from "
                                f"{protocol.__name__}.{name}{inspect.signature(declared)}")
    return breaches


def cases():
    import hvdtrain.tensorflow.backend as tf_backend
    import hvdtrain.torch.backend as torch_backend

    return [(core.Backend, core.SerialBackend), (core.Backend, HorovodBackendBase),
            (torch_backend.TorchBackend, torch_backend.HorovodBackend),
            (torch_backend.TorchBackend, torch_backend.SerialBackend),
            (tf_backend.TensorFlowBackend, tf_backend.HorovodBackend),
            (tf_backend.TensorFlowBackend, tf_backend.SerialBackend)]


@pytest.mark.parametrize(("protocol", "implementation"), cases(),
                         ids=lambda cls: f"{cls.__module__.split('.')[1]}.{cls.__name__}")
def test_every_backend_has_every_member_of_its_contract(protocol, implementation):
    assert not contract_breaches(protocol, implementation)


def test_a_missing_or_different_member_is_named():
    class Partial(core.SerialBackend):
        def broadcast_object(self, obj, root_rank=0):
            return obj

    del_barrier = type("NoBarrier", (), {k: v for k, v in vars(core.SerialBackend).items() if k != "barrier"})
    assert any("Partial.broadcast_object(self, obj, root_rank=0) differs" in b
               for b in contract_breaches(core.Backend, Partial))
    assert "NoBarrier lacks barrier" in contract_breaches(core.Backend, del_barrier)
