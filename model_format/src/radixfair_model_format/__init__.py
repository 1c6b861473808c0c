"""The checkpoint contract the worker serves and the distiller writes, defined once.

- ``model_config``: ModelConfig, the Llama architecture numbers read from config.json.
- ``quantized_checkpoint``: the weight-only quantized checkpoint format (int8 / fp8, per output channel).
- ``model_store``: finding a model directory, converting the packaged GGUF once.

Importing this package, ``model_config`` or ``model_store`` imports no torch (the worker's serving
front reads them); ``quantized_checkpoint`` does.
"""
