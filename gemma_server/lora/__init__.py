"""LoRA adapters in PEFT's format: validated loading, device stacks, and the name registry."""

from gemma_server.lora.adapter import LoraAdapter, load_adapter, validate_name
from gemma_server.lora.registry import AdapterRegistry

__all__ = ["AdapterRegistry", "LoraAdapter", "load_adapter", "validate_name"]
