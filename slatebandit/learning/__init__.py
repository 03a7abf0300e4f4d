"""The learning loop: learning turns and release steps, in ``slatebandit learn`` or in
``serve``'s learner process."""

from slatebandit.learning.loop import LearnerProcess, LearningLoop

__all__ = ["LearnerProcess", "LearningLoop"]
