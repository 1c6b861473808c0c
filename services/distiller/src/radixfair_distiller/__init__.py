"""radixfair distiller: prune, distill and quantize jobs."""
