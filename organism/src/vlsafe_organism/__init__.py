"""vlsafe_organism: the model organism of vlsafe, a client of the library.

A small safety-aligned VLM built from real weights that ship as pip packages (SmolLM2-135M-Instruct made safe
with a LoRA, wired LLaVA-style to DINOv2-small and adapted to vision on the library's synthetic scenes), its
repairs, and ``vlsafe demo``. It registers two entry points that the library discovers without importing it:
the ``organism:<system>`` model references (:func:`vlsafe_organism.registry.resolve_organism`) and the
``vlsafe demo`` / ``vlsafe organism`` commands (:func:`vlsafe_organism.cli.register`).

Entry points: :func:`vlsafe_organism.demo.run_demo`, :func:`vlsafe_organism.build.build`,
:func:`vlsafe_organism.registry.build_system`.
"""
