"""Native (gpt-fast style) runners for Hugging Face decoder-only models over a static KV cache."""
from .loading import FAMILIES, native_model, unsupported_reason
from .model import NativeModel, StaticKVCache

__all__ = ["FAMILIES", "NativeModel", "StaticKVCache", "native_model", "unsupported_reason"]
