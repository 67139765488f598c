"""Long learning and speed benchmarks (not part of the test suite). Run each from the repository root as a module,
with the package importable (``make setup`` installs it; otherwise prefix ``PYTHONPATH=.``)::

    .venv/bin/python -m bench.bench_onnx --help

Shared helpers: :mod:`bench._common` (timing, threads, machine, results), :mod:`bench._ablation` (the frame of the
ablation learning benchmarks), :mod:`bench.scenes` (random evaluation scenes, also used by the tests). Measured
results and the experiment history behind the synthetic configs: ``bench/RESULTS.md``.
"""
