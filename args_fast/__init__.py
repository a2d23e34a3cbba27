"""args_fast: fast, correct ARGS (Alignment as Reward-Guided Search) decoding."""
from .decoder import BACKENDS, ARGSDecoder, GenerateOutput, decode_continuations, encode_prompts, generate

__all__ = ["BACKENDS", "ARGSDecoder", "GenerateOutput", "decode_continuations", "encode_prompts", "generate"]
__version__ = "0.1.0"
