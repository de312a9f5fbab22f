"""The world model: security groups, instances, timeline and mutations (spec sections 1, 6)."""
from .files import load_world
from .model import Change, Instance, Rule, SecurityGroup, TimelineEvent, World

__all__ = ["World", "load_world", "TimelineEvent", "Rule", "SecurityGroup", "Instance", "Change"]
