"""Throughput benchmarks for hvdtrain, raw Horovod, PyTorch DDP and TensorFlow.

Run ``python -m benchmarks.run`` (or ``make bench``); it launches every worker
in ``benchmarks/workers/`` one configuration at a time and writes the tables
(``docs/performance-results.md``), ``docs/performance.png`` and
``benchmarks/results/latest.json``; ``docs/performance.md`` reads them. The
pipeline comparison is ``python -m benchmarks.pipeline``.
"""
