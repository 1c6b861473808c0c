"""radixfair's inference engine as a library: the engine loop, scheduling policies, radix cache,
model runner, model and kernels. The worker serves it over gRPC; the distiller runs it in process.
It imports no service package, and nothing here imports torch at package import."""
