"""args_fast: fast, correct ARGS (Alignment as Reward-Guided Search) decoding."""
from .decoder import BACKENDS, ARGSDecoder, GenerateOutput, decode_continuations, encode_prompts, generate
from .hf_generate import ARGSGenerateOutput, custom_generate
from .objectives import NormalizedReward, calibrate, store_normalization
from .reward_head import RewardHead
from .vocab_rewards import ImplicitReward, TokenReward, VocabReward

__all__ = ["BACKENDS", "ARGSDecoder", "ARGSGenerateOutput", "GenerateOutput", "ImplicitReward", "NormalizedReward",
           "RewardHead", "TokenReward", "VocabReward", "calibrate", "custom_generate", "decode_continuations",
           "encode_prompts", "generate", "store_normalization"]
__version__ = "0.1.0"
