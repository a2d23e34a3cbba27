"""args_fast: fast, correct ARGS (Alignment as Reward-Guided Search) decoding.

The public API is the names below. The package's layers, each importing only those under it:
``validation`` / ``hf`` (leaves) < ``rewards`` (what a reward is) < ``engine`` (backends, runners, ops,
kernels) < ``decoding``, ``integrations``, ``loading``, ``default_models`` (the API) < ``data`` <
``training`` < ``evaluation`` (the studies) < ``cli`` (the face). ``import args_fast`` loads no study.
"""
from . import _moved
from .decoding.calibration import calibrate
from .decoding.decoder import BACKENDS, ARGSDecoder, GenerateOutput, generate
from .decoding.inputs import decode_continuations, encode_prompts
from .integrations.hf_generate import ARGSGenerateOutput, custom_generate
from .rewards.head import RewardHead
from .rewards.normalization import NormalizedReward, store_normalization
from .rewards.vocab import ImplicitReward, TokenReward, VocabReward

_moved.install()

__all__ = ["BACKENDS", "ARGSDecoder", "ARGSGenerateOutput", "GenerateOutput", "ImplicitReward", "NormalizedReward",
           "RewardHead", "TokenReward", "VocabReward", "calibrate", "custom_generate", "decode_continuations",
           "encode_prompts", "generate", "store_normalization"]
__version__ = "0.1.0"
