"""Command-line tools: local stack, publishers, loaders, benchmarks."""
