"""Tools beside the product: benchmarks, the real-footage demo and the overlay (``python -m tools``).

They call the product's public functions and registries (``pipeline.geometry.modes``,
``pipeline.job.plan``, ``train``), so every figure they print measures the code users run.
"""
