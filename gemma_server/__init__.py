"""gemma_server: an inference server for Google's Gemma models on JAX.

Layers (see STYLE.md): cli -> api -> service -> engine -> model; tokenizer beside the service.
"""

__version__ = "0.1.0"
