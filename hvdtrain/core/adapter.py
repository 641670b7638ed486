"""The protocol a framework adapter implements for the core and callbacks."""
from __future__ import annotations

from typing import Any, Protocol

from hvdtrain.core.backend import Backend


class FrameworkAdapter(Protocol):
    """What the core needs from PyTorch or TensorFlow, and nothing more."""

    name: str
    backend: Backend

    def broadcast_state(self, model: Any, optimizer: Any, root: int = 0) -> None:
        """Make every rank's model and optimizer state equal to ``root``'s.

        Checks first that every rank holds the same tensors (``core.agreement.check_ranks_agree``).
        """

    def state_dict(self, model: Any, optimizer: Any) -> dict[str, Any]:
        """Model and optimizer state: nested dicts, lists, tuples, scalars, strings, None and tensors.

        Collective: checkpoints call it on every rank, since a sharded optimizer gathers its state (to
        rank 0; the other ranks' copy may leave that state out).
        """

    def load_state_dict(self, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def get_learning_rates(self, optimizer: Any) -> list[float]:
        """The current learning rate of each parameter group."""

    def set_learning_rates(self, optimizer: Any, rates: list[float]) -> None:
        """Set the learning rate of each parameter group."""

    def rescale_learning_rates(self, optimizer: Any, factor: float) -> None:
        """Multiply the learning rates restored from a checkpoint by ``factor`` (resuming on another world size).

        Rates a framework schedule derives from this job's world size are left as they are.
        """

    def rng_state(self) -> Any:
        """This process's random number generator states (framework and NumPy)."""

    def set_rng_state(self, state: Any) -> None:
        """Restore what ``rng_state`` returned."""

    def serialize(self, obj: Any) -> bytes:
        """Encode a checkpoint payload in the safe format (``core.state_codec.encode_state``)."""

    def deserialize(self, data: bytes) -> Any:
        """Decode what ``serialize`` returned without unpickling anything (``core.state_codec.decode_state``).

        Raises:
            LegacyCheckpointError: the payload is a pickle of hvdtrain 0.1.0.
            CheckpointError: the payload is damaged or holds pickled objects.
        """

    def versions(self) -> dict[str, str]:
        """Versions to record in checkpoints (framework, Horovod)."""
