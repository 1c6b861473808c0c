"""radixfair shared package: what the router, the workers, the distiller and
the client all need, and nothing that pulls in torch."""

__version__ = "0.1.0"
