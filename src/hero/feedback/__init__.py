"""Feedback sources behind one interface: a person (web), the simulated human (judge), a reward function."""

from hero.feedback.base import FeedbackSource, RoundFeedback, make_feedback_source
from hero.feedback.reward import RewardFeedback
from hero.feedback.simulated import SimulatedHuman

__all__ = ["FeedbackSource", "RoundFeedback", "make_feedback_source", "RewardFeedback", "SimulatedHuman"]
