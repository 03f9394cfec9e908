"""Tools beside the product: benchmarks that call the product's public functions."""
