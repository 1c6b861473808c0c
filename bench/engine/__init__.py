"""The engine and the serving path: engine throughput, the worker and the router over gRPC and HTTP."""
