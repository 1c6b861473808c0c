"""The distiller's benchmarks: loss memory, decode speed, the results tables and their GPU calls."""
