"""The pieces of the pipeline that need no other process: stages, micro-batches, the wire format."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.torch.pipeline import micro_batch_slices, split_sequential, stage_module
from hvdtrain.torch.transfer import DIRECT, HOST, PINNED, header_of, rebuild, transfer_mode


def test_a_sequential_is_cut_where_the_parameter_counts_are_most_even():
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    first, second = split_sequential(model, 2)
    assert [type(m).__name__ for m in first] == ["Linear", "ReLU"]  # 16.6k of the 51.3k parameters
    assert len(second) == 3 and second[0] is model[2]
    assert [len(stage) for stage in split_sequential(model, 5)] == [1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="5 layers cannot fill 6 pipeline stages"):
        split_sequential(model, 6)


def test_every_form_of_stages_gives_this_ranks_stage():
    layers = [nn.Linear(4, 4), nn.Linear(4, 2)]
    assert stage_module(layers, 1, 2) is layers[1]
    assert isinstance(stage_module(lambda stage: layers[stage], 0, 2), nn.Linear)
    with pytest.raises(ValueError, match="given as 2 stages but the pipeline has 3"):
        stage_module(layers, 0, 3)
    with pytest.raises(TypeError, match="returned str for stage 0"):
        stage_module(lambda stage: "layers", 0, 2)


def test_micro_batches_are_near_equal_and_never_empty():
    assert [s.stop - s.start for s in micro_batch_slices(10, 4)] == [3, 3, 2, 2]
    assert [s.stop - s.start for s in micro_batch_slices(3, 4)] == [1, 1, 1]  # a short last batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool])
def test_tensors_travel_as_raw_bytes_with_their_dtype_and_shape(dtype):
    tensor = (torch.randn(3, 1, 5) * 4).to(dtype)
    raw = tensor.reshape(-1).view(torch.uint8).clone()
    assert raw.numel() == tensor.numel() * tensor.element_size()
    assert torch.equal(rebuild(torch.tensor(header_of(tensor)).numpy(), raw), tensor)
    with pytest.raises(TypeError, match="one tensor to the next stage"):
        header_of((tensor, tensor))
    with pytest.raises(TypeError, match="complex64 with 3 dimensions cannot travel"):
        header_of(tensor.to(torch.complex64))


def test_a_gpu_stage_sends_gpu_memory_only_to_a_cuda_aware_mpi():
    assert transfer_mode(torch.device("cpu"), cuda_aware=True) == HOST
    assert transfer_mode(torch.device("cuda", 1), cuda_aware=True) == DIRECT
    assert transfer_mode(torch.device("cuda", 0), cuda_aware=False) == PINNED
    with pytest.raises(ValueError, match="on mps cannot send"):
        transfer_mode(torch.device("mps"), cuda_aware=False)


def test_stages_given_to_a_one_process_trainer_train_as_one_model():
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    stages = [nn.Sequential(nn.Linear(4, 8), nn.Tanh()), nn.Linear(8, 2)]
    trainer = ht.Trainer(lambda stage: stages[stage], lambda params: torch.optim.SGD(params, lr=0.1),
                         nn.functional.cross_entropy, (x, y), backend=ht.SerialBackend(), progress=False)
    before = stages[0][0].weight.detach().clone()
    trainer.fit()
    assert trainer.pipeline is None and trainer.model is stages[0]  # one stage: the builder's stage 0
    assert not torch.equal(before, stages[0][0].weight)


def test_what_a_pipeline_cannot_do_is_refused_before_anything_is_built():
    from hvdtrain.core.options import TrainingOptions
    from hvdtrain.torch.trainer import _check_pipeline_options

    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    _check_pipeline_options(TrainingOptions(precision="16-mixed"), sgd, None, None, ht.Trainer)  # float16 trains
    with pytest.raises(ValueError, match="a custom training_step, validation_step or predict_step"):
        _check_pipeline_options(TrainingOptions(), sgd, lambda batch: batch, None, ht.Trainer)
    with pytest.raises(ValueError, match="Adasum is not supported in a pipeline yet"):
        _check_pipeline_options(TrainingOptions(op="adasum"), sgd, None, None, ht.Trainer)


def test_a_one_group_optimizer_is_rebuilt_over_the_stage_even_after_a_scheduler_touched_it():
    from hvdtrain.torch.trainer import _stage_optimizer

    whole = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    adam = torch.optim.Adam(whole.parameters(), lr=0.01, betas=(0.8, 0.9))
    torch.optim.lr_scheduler.StepLR(adam, step_size=1)  # adds initial_lr to the group
    rebuilt = _stage_optimizer(adam, whole[1])
    assert type(rebuilt) is torch.optim.Adam and rebuilt.param_groups[0]["betas"] == (0.8, 0.9)
    assert rebuilt.param_groups[0]["params"] == list(whole[1].parameters())


def test_a_pipeline_under_elastic_is_refused_before_horovod_starts(monkeypatch):
    import horovod.torch as hvd

    from hvdtrain.engine.horovod_backend import initialize

    monkeypatch.setenv("HOROVOD_ELASTIC", "1")
    with pytest.raises(RuntimeError, match=r"cannot run under --elastic: .*fixed MPI communicators"):
        initialize(hvd, pipeline=2, mpi=lambda: pytest.fail("MPI must not start"))


_ASK_MPI = """
import json, os
from mpi4py import MPI
from hvdtrain.engine.peers import loaded_mpi_libraries, mpi_cuda_aware
print(json.dumps({"libraries": loaded_mpi_libraries(), "asked": mpi_cuda_aware(),
                  "forced": [mpi_cuda_aware({"HVDTRAIN_CUDA_AWARE_MPI": v}) for v in ("1", "0")]}))
try:
    mpi_cuda_aware({"HVDTRAIN_CUDA_AWARE_MPI": "yes"})
except ValueError as error:
    print(error)
"""


def test_whether_mpi_takes_gpu_memory_is_asked_of_the_mpi_in_the_process():
    import json
    import subprocess
    import sys

    from tests.launch import REPO

    built_with_cuda = subprocess.run(["ompi_info", "--parsable", "--all"], capture_output=True, text=True,
                                     check=True).stdout
    proc = subprocess.run([sys.executable, "-c", _ASK_MPI], capture_output=True, text=True, timeout=60, cwd=REPO,
                          check=True)
    found = json.loads(proc.stdout.splitlines()[0])
    assert any("libmpi.so" in path for path in found["libraries"]), found
    if "mpi_built_with_cuda_support:value:false" in built_with_cuda:
        assert found["asked"] is False
    assert found["forced"] == [True, False]
    assert "HVDTRAIN_CUDA_AWARE_MPI='yes': set it to 1" in proc.stdout
