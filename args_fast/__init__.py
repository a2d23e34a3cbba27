"""args_fast: fast, correct ARGS (Alignment as Reward-Guided Search) decoding."""
from .decoder import BACKENDS, ARGSDecoder, GenerateOutput, decode_continuations, encode_prompts, generate
from .reward_head import RewardHead
from .vocab_rewards import ImplicitReward, TokenReward, VocabReward

__all__ = ["BACKENDS", "ARGSDecoder", "GenerateOutput", "ImplicitReward", "RewardHead", "TokenReward", "VocabReward",
           "decode_continuations", "encode_prompts", "generate"]
__version__ = "0.1.0"
