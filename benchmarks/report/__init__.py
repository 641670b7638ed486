"""Turn the benchmark results into docs/performance.md and docs/performance.png.

Every number in the report, the analysis sentences included, is computed
from the results JSON, so re-running the benchmark rewrites the text too.
Facts about the machine (cores, GPUs), the run (workers, batch size, threads)
and the models (gradient tensors) come from the results or from the model
definitions in ``benchmarks.common``; variants are named through
``benchmarks.matrix``.

Modules: ``results`` (indexed lookups), ``text`` (wording), ``tables``,
``goals``, ``analysis`` and ``sweep`` (sentences), ``defaults`` (the
recommendations), ``markdown`` (the document) and ``plot`` (the figure).
"""
from benchmarks.report.markdown import write_markdown
from benchmarks.report.plot import write_plot

__all__ = ["write_markdown", "write_plot"]
