"""Repairs on the model organism: each repair method of vlsafe applied to ``organism:vl`` and evaluated in
``vlsafe demo`` beside the unrepaired systems.

* :mod:`.select` -- the fixed rule that picks a repair's setting on the validation split;
* :mod:`.cmrm` -- CMRM (dataset- and sample-level) steering of ``organism:vl``;
* :mod:`.merge` -- merges of the safe LLM into ``organism:vl`` (whole-model and layer-selective);
* :mod:`.trained` -- trained repairs (TGA, safety SFT, DPO, joint training) as committed artefacts;
* :mod:`.build` -- ``vlsafe organism build --stage repairs``: trains the repairs and runs the selections;
* :mod:`.systems` -- the repaired systems of the demo, loaded lazily.
"""
