"""Solvers' physics kernels (each solver is a part: see :mod:`physim.parts`)."""
