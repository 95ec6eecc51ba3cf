"""Interactive demos, installed as ``physim.demos``; run one with ``physim demo NAME`` or ``python demos/NAME.py``."""
