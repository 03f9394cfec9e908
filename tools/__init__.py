"""Tools beside the product: benchmarks, the real-footage demo and the overlay (``python -m tools``).

They call the product's public functions and registries (``pipeline.geometry_modes``,
``pipeline.job``, ``train``), so every figure they print measures the code users run.
"""
