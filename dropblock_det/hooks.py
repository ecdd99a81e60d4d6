"""PLACEHOLDER (issue 3): the keep_prob schedule hook."""
from detectron2.engine import HookBase


class DropBlockSchedule(HookBase):
    pass
