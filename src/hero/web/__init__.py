"""The web page for human feedback: ``hero train --feedback web``, ``hero label`` and ``hero export``."""

from hero.web.label import export_run, label_run, pending_rounds
from hero.web.server import WebFeedback, create_app
from hero.web.session import RoundSpec, Session, SubmitError

__all__ = ["RoundSpec", "Session", "SubmitError", "WebFeedback", "create_app", "export_run", "label_run",
           "pending_rounds"]
