"""Static runners: gpt-fast style forwards of Hugging Face decoder-only models over a static KV cache.

``from_hf.static_runner(model, role)`` borrows the model's modules (no weight copy) and returns a
``transformer.StaticRunner`` with ``prefill`` and ``decode`` entry points of static shapes.
"""
from .from_hf import FAMILIES, static_runner, unsupported_reason
from .transformer import StaticRunner

__all__ = ["FAMILIES", "StaticRunner", "static_runner", "unsupported_reason"]
