"""Generated protobuf and gRPC modules land here at install time (see setup.py)."""
