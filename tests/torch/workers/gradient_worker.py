"""Checks one distributed step against the single-process step on the combined batch."""
from __future__ import annotations

import copy

import horovod.torch as hvd
import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.torch.adapter import TorchAdapter
from tests.launch import report


def main() -> None:
    backend = ht.init()
    torch.manual_seed(100 + backend.rank)  # ranks start different on purpose
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer = ht.DistributedOptimizer(base, model, scale_lr=False)
    TorchAdapter(backend).broadcast_state(model, optimizer)
    reference = copy.deepcopy(model)

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2 * 6 * backend.size, 8, generator=gen, dtype=torch.float64)  # the combined batch
    y = torch.randint(0, 3, (len(x),), generator=gen)
    order = ht.DistributedBatchSampler(len(x), backend.rank, backend.size, batch_size=12, shuffle=False)
    local = next(iter(order))

    nn.functional.cross_entropy(model(x[local]), y[local]).backward()
    optimizer.synchronize()
    distributed_grads = [p.grad.clone() for p in model.parameters()]
    with optimizer.skip_synchronize():
        optimizer.step()

    nn.functional.cross_entropy(reference(x), y).backward()
    grad_error = max((g - r.grad).abs().max().item() for g, r in zip(distributed_grads, reference.parameters()))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = hvd.allgather(flat.unsqueeze(0))
    spread = (gathered - gathered[0]).abs().max().item()

    # Clipping must see the averaged gradient: the same norm as the combined batch's.
    torch.optim.SGD(reference.parameters(), lr=0.1).step()  # the same first step as the distributed model
    optimizer.zero_grad()
    reference.zero_grad()
    nn.functional.cross_entropy(model(x[local]), y[local]).backward()
    norm = ht.clip_grad_norm(optimizer, model.parameters(), max_norm=0.05)
    nn.functional.cross_entropy(reference(x), y).backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.05)
    clip_error = max((p.grad - r.grad).abs().max().item() for p, r in zip(model.parameters(),
                                                                          reference.parameters()))
    report({"rank": backend.rank, "grad_error": grad_error, "param_spread": spread,
                                  "local_batch": len(local), "norm_error": abs(norm.item() - ref_norm.item()),
                                  "clip_error": clip_error})


if __name__ == "__main__":
    main()
