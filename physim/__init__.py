"""physim: a differentiable physics simulator for robot manipulation and soft robotics.

Importing physim initializes nothing; call :func:`physim.init` (or let the first
scene do it with the defaults / ``PHYSIM_ARCH``).
"""

from . import backend
from .backend import init
from .geometry import Box, Cylinder, Mesh, Shape, Sphere
from .materials import Elastic, Fluid, Material, Muscle, NeoHookean, Plasticine, Rigid, Sand, Snow, Viscoplastic
from .meshes import TetMesh, dome_gel, flat_pad, read_tet_mesh
from .parts.emitter import Emitter
from .parts.fem import FEMBody
from .parts.smoke import SmokeField, Vent
from .parts.springs import MassSpring
from .scene import GradientError, Gradients, Scene, SimulationError
from .shells import ShellBody, ShellMaterial, ShellMesh
from .tactile import TactileSensor
from .tape import Tape
from .tools import BoxTool, CapsuleTool, CupTool, CylinderTool, SphereTool, Tool

__version__ = "0.1.0"

__all__ = [
    "init",
    "backend",
    "Scene",
    "Gradients",
    "SimulationError",
    "GradientError",
    "Tape",
    "Shape",
    "Box",
    "Sphere",
    "Cylinder",
    "Mesh",
    "Material",
    "Elastic",
    "NeoHookean",
    "Plasticine",
    "Sand",
    "Snow",
    "Fluid",
    "Viscoplastic",
    "Muscle",
    "Rigid",
    "TactileSensor",
    "MassSpring",
    "FEMBody",
    "SmokeField",
    "Vent",
    "Emitter",
    "ShellMesh",
    "ShellMaterial",
    "ShellBody",
    "TetMesh",
    "flat_pad",
    "dome_gel",
    "read_tet_mesh",
    "Tool",
    "SphereTool",
    "BoxTool",
    "CapsuleTool",
    "CylinderTool",
    "CupTool",
]
