"""Rendering of physim scenes with PyVista: live windows, frames as images, videos.

::

    import physim as ps
    from physim.render import Renderer, record_video, render_rollout

    scene = ...  # a built ps.Scene
    frames = render_rollout(scene, actions, "out/rollout.mp4", every=2)

    r = Renderer(scene, off_screen=True)      # reads the scene, never changes it
    image = r.frame()                         # (H, W, 3) uint8
    r.close()

Particles are spheres colored by material class (``MATERIAL_COLORS``), tools are
meshes posed from ``scene.tool_poses()``; 2D scenes are drawn in the plane z = 0.5
and viewed along -z. Set ``pyvista.OFF_SCREEN = True`` or ``PYVISTA_OFF_SCREEN=true`` on
machines without a display.
"""

from .meshes import density_surface, finish_line, image_patch, pose_matrix, tool_mesh
from .renderer import GOAL_COLOR, MATERIAL_COLORS, TOOL_COLOR, Renderer, material_color
from .video import record_video, render_rollout

__all__ = [
    "Renderer",
    "record_video",
    "render_rollout",
    "tool_mesh",
    "pose_matrix",
    "material_color",
    "MATERIAL_COLORS",
    "TOOL_COLOR",
    "GOAL_COLOR",
    "density_surface",
    "image_patch",
    "finish_line",
]
