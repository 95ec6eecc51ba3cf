"""Contact: tool shapes (SDFs) and the contact response shared by every solver."""

from .sdf import project_velocity, tool_sdf

__all__ = ["tool_sdf", "project_velocity"]
