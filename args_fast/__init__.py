"""args_fast: fast, correct ARGS (Alignment as Reward-Guided Search) decoding."""
from .decoder import ARGSDecoder, GenerateOutput, generate

__all__ = ["ARGSDecoder", "GenerateOutput", "generate"]
__version__ = "0.1.0"
