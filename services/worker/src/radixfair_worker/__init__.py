"""radixfair worker: serves one model replica (the radixfair engine) over gRPC."""
