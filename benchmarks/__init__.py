"""Throughput benchmarks for hvdtrain, raw Horovod, PyTorch DDP and TensorFlow.

Run ``python -m benchmarks.run`` (or ``make bench``); it launches every worker
in ``benchmarks/workers/`` one configuration at a time and writes
``docs/performance.md``, ``docs/performance.png`` and
``benchmarks/results/latest.json``.
"""
