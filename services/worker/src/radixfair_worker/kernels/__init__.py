"""Triton kernels for the GPU backend, one module per kernel, each with its torch reference.

Every launcher here also runs on CPU tensors under ``TRITON_INTERPRET=1`` (the CI path).
Importing this package needs triton; the torch backend never imports it.
"""
