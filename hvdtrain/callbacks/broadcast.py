"""Broadcast the initial model and optimizer state from rank 0."""
from __future__ import annotations

from hvdtrain.callbacks.base import Callback, Order
from hvdtrain.core.context import TrainContext


class BroadcastInitialState(Callback):
    """Makes every rank start from rank 0's weights and optimizer state.

    Runs after ``ResumeFromCheckpoint`` so a resumed state is what spreads. Under elastic training
    the first sync spreads rank 0's state instead (a worker that joins later runs no broadcast here).
    """

    order = Order.BROADCAST

    def __init__(self, root: int = 0) -> None:
        self.root = root

    def on_train_begin(self, ctx: TrainContext) -> None:
        if ctx.elastic:
            return
        ctx.adapter.broadcast_state(ctx.model, ctx.optimizer, root=self.root)
