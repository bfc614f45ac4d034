"""Reward models behind one interface (images + prompts → scores): DDPO rewards and "AI feedback" judges.

``load_reward_model("pickscore", path="/models/PickScore_v1")``; everything loads from local paths only.
"""

from hero.rewards.base import RewardModel, RewardModelUnavailable, as_pixels, as_uint8
from hero.rewards.jpeg import JpegReward, jpeg_size_kb
from hero.rewards.registry import REWARD_MODELS, load_reward_model

__all__ = ["REWARD_MODELS", "JpegReward", "RewardModel", "RewardModelUnavailable", "as_pixels", "as_uint8",
           "jpeg_size_kb", "load_reward_model"]
