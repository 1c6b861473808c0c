"""radixfair worker: the serving engine of one model replica."""
