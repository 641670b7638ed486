"""Tensor-parallel layers must equal their dense twins: the loss, and every gradient (the rank's slice of it).

Each rank builds the dense model from one seed, then the tensor-parallel model from it over the whole
world, runs the same batch through both and reports the largest differences, and the error a layer
that cannot be split evenly gives.
"""
from __future__ import annotations

import horovod.torch as hvd
import torch
from torch import nn
from torch.nn import functional

from hvdtrain.torch.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    TensorGroup,
    VocabParallelEmbedding,
    vocab_parallel_cross_entropy,
)
from tests.launch import report

hvd.init()
torch.manual_seed(5)
VOCAB, WIDTH, HIDDEN = 12, 6, 18
dense = nn.ModuleDict({"embed": nn.Embedding(VOCAB, WIDTH), "up": nn.Linear(WIDTH, HIDDEN),
                       "down": nn.Linear(HIDDEN, WIDTH), "mix": nn.Linear(WIDTH, WIDTH),
                       "out": nn.Linear(WIDTH, WIDTH), "head": nn.Linear(WIDTH, VOCAB)}).double()
group = TensorGroup.world()
split = nn.ModuleDict({
    "embed": VocabParallelEmbedding.from_dense(dense["embed"], group),
    "up": ColumnParallelLinear.from_dense(dense["up"], group),
    "down": RowParallelLinear.from_dense(dense["down"], group),
    "mix": ColumnParallelLinear.from_dense(dense["mix"], group, gather_output=True),
    "out": RowParallelLinear.from_dense(dense["out"], group, input_is_parallel=False),
    "head": ColumnParallelLinear.from_dense(dense["head"], group),
})
ids = torch.randint(0, VOCAB, (20,))
targets = torch.randint(0, VOCAB, (20,))


def hidden(layers: nn.ModuleDict) -> torch.Tensor:
    x = torch.relu(layers["up"](layers["embed"](ids)))
    return layers["head"](layers["out"](torch.tanh(layers["mix"](layers["down"](x)))))


dense_loss = functional.cross_entropy(hidden(dense), targets)
split_loss = vocab_parallel_cross_entropy(hidden(split), targets, group).mean()
dense_loss.backward()
split_loss.backward()


def expected_grad(name: str, param: str) -> torch.Tensor:
    grad, layer = getattr(dense[name], param).grad, split[name]
    if isinstance(layer, RowParallelLinear):
        return grad[:, layer.part] if param == "weight" else grad
    return grad[layer.part]


grad_error = {f"{name}.{param}": (getattr(split[name], param).grad - expected_grad(name, param)).abs().max().item()
              for name in split for param in ("weight", "bias") if getattr(split[name], param, None) is not None}
try:
    ColumnParallelLinear(WIDTH, 7, group)
    uneven = None
except ValueError as error:
    uneven = str(error)
report({"rank": hvd.rank(), "loss_error": abs(split_loss.item() - dense_loss.item()), "grad_error": grad_error,
        "shard_rows": split["up"].weight.shape[0], "uneven": uneven})
