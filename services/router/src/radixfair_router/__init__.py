"""radixfair router: routes requests across workers."""
