"""vlsafe.hooks: forward hooks on decoder layers, always inside context managers.

Capture (``record_hidden_states``, ``capture``, ``HiddenStates``), forward passes that stop after the deepest
recorded layer (``forward_states``) and steering (``SteeringVector``, ``steer`` and its operators).
"""

from vlsafe.hooks.apply import steer
from vlsafe.hooks.forward import build_variant, forward_states
from vlsafe.hooks.operators import OPERATORS, ablate, add, clamp
from vlsafe.hooks.record import Recorder, capture, record_hidden_states, resolve_layers
from vlsafe.hooks.states import HiddenStates
from vlsafe.hooks.vector import SteeringVector

__all__ = [
    "OPERATORS",
    "HiddenStates",
    "Recorder",
    "SteeringVector",
    "ablate",
    "add",
    "build_variant",
    "capture",
    "clamp",
    "forward_states",
    "record_hidden_states",
    "resolve_layers",
    "steer",
]
