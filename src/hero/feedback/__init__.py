"""Feedback sources behind one interface: a person (web), the simulated human (judge), a reward function."""

from hero.feedback.base import FeedbackSource, RoundFeedback
from hero.feedback.reward import RewardFeedback
from hero.feedback.simulated import SimulatedHuman
from hero.feedback.sources import make_feedback_source

__all__ = ["FeedbackSource", "RoundFeedback", "make_feedback_source", "RewardFeedback", "SimulatedHuman"]
