"""Framework-agnostic core: collectives protocol, training state, checkpoints, sharding."""
