"""vlsafe.methods: the repair methods, side by side and independent of each other.

:mod:`vlsafe.methods.cmrm` (inference-time steering), :mod:`vlsafe.methods.merging` (weight merging) and
:mod:`vlsafe.methods.training` (TGA, safety SFT, DPO and the trainer they share).
"""
