"""``organism:<system>`` model names: the organism's stages rebuilt from the pip base weights plus the
committed artefacts (sha256-verified), materialised once as a regular HF directory and loaded like any model.

Systems: ``safe-llm`` (causal LM), ``vlm`` (LLaVA: safe LLM + projector-only VL training), ``vl`` (LLaVA:
projector + LLM LoRA VL training, recipe ``vl:``), ``vl-full`` (the same projector stage, then the LoRA phase
of recipe ``vl_full:``, where text-only refusal erodes with image refusal: paper 2's regime; built when the
artefacts hold it), and the trained repairs ``vl+tga``, ``vl+sft``, ``vl+dpo``, ``vl+joint``
(:mod:`vlsafe_organism.repairs.trained`: a start system plus a committed weight delta), and ``vlm+tga``
(``vlm`` with a projector trained by TGA, :mod:`vlsafe_organism.repairs.tga_vlm`). More systems can be
added with ``SYSTEMS.register("vl+name", builder)``; a builder takes ``(cache_dir, art_dir)`` and returns
``(model, processor_or_tokenizer)``. ``organism:base-llm`` resolves to the converted pip base LLM (before any
training), e.g. as a merge's base or one side of a weight diff.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlsafe.core.errors import ModelLoadError
from vlsafe.core.registry import Registry
from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS, load_artifact, merge_lora, read_manifest
from vlsafe_organism.base import base_llm_dir, cached_build, load_base_vision, organism_cache_dir
from vlsafe_organism.deltas import TRAINED_REPAIRS, apply_delta
from vlsafe_organism.safe_llm import load_safe_llm
from vlsafe_organism.wiring import wire_llava

logger = logging.getLogger(__name__)
PREFIX = "organism:"
Builder = Callable[[Path | None, Path], tuple[Any, Any]]
SYSTEMS: Registry[Builder] = Registry("organism system")
#: ``organism:base-llm``: the pip base SmolLM2 itself (converted, not a trained system), e.g. a merge's base.
BASE_LLM = "base-llm"
BASE_LLM_REF = PREFIX + BASE_LLM
#: Artefacts each built-in system depends on (their checksums key the materialised directory).
DEPENDS: dict[str, tuple[str, ...]] = {
    "safe-llm": ("safe_lora.safetensors",),
    "vlm": ("safe_lora.safetensors", "vlm_projector.safetensors"),
    "vl": ("safe_lora.safetensors", "vl_projector.safetensors", "vl_lora.safetensors"),
    "vl-full": ("safe_lora.safetensors", "vl_full_projector.safetensors", "vl_full_lora.safetensors"),
}


def artifacts_dir() -> Path:
    """The package's committed artefact directory (functions that build systems take another as ``art_dir``)."""
    return PACKAGE_ARTIFACTS


def _safe_llm(cache_dir: Path | None, art: Path) -> tuple[Any, Any]:
    tensors, meta = load_artifact(art, "safe_lora.safetensors")
    return load_safe_llm(cache_dir, tensors, meta["scale"])


def _vlm(cache_dir: Path | None, art: Path, projector: str) -> tuple[Any, Any]:
    llm, tok = _safe_llm(cache_dir, art)
    proj, meta = load_artifact(art, projector)
    state = {k: v.float() for k, v in proj.items()}
    layer = int(meta.get("config", {}).get("feature_layer", -1))  # artefacts before the field: last layer
    return wire_llava(
        load_base_vision(cache_dir),
        llm,
        tok,
        projector_state=state,
        size=int(meta["size"]),
        feature_layer=layer,
    )


def _vl(cache_dir: Path | None, art: Path, prefix: str = "vl") -> tuple[Any, Any]:
    model, processor = _vlm(cache_dir, art, f"{prefix}_projector.safetensors")
    tensors, meta = load_artifact(art, f"{prefix}_lora.safetensors")
    merge_lora(model, tensors, float(meta["scale"]))
    return model, processor


SYSTEMS.register("safe-llm", _safe_llm)
SYSTEMS.register("vlm", lambda c, a: _vlm(c, a, "vlm_projector.safetensors"))
SYSTEMS.register("vl", _vl)
SYSTEMS.register("vl-full", lambda c, a: _vl(c, a, "vl_full"))


def _trained(cache_dir: Path | None, art: Path, name: str) -> tuple[Any, Any]:
    start, file = TRAINED_REPAIRS[name]
    model, processor = SYSTEMS.get(start)(cache_dir, art)
    tensors, _ = load_artifact(art, file)
    apply_delta(model, tensors)
    return model, processor


for _name, (_start, _file) in TRAINED_REPAIRS.items():
    SYSTEMS.register(f"vl+{_name}", functools.partial(_trained, name=_name))
    DEPENDS[f"vl+{_name}"] = (*DEPENDS[_start], _file)


#: the projector-only TGA repair ``vlm+tga`` (:mod:`vlsafe_organism.repairs.tga_vlm`): ``organism:vlm`` with its
#: projector replaced (``tga_vlm_delta.safetensors``), evaluated with the retriever of ``tga_vlm_retrieval.safetensors``
TGA_VLM = "vlm+tga"
TGA_VLM_FILES = ("tga_vlm_delta.safetensors", "tga_vlm_retrieval.safetensors")


def _tga_vlm(cache_dir: Path | None, art: Path) -> tuple[Any, Any]:
    model, processor = SYSTEMS.get("vlm")(cache_dir, art)
    tensors, _ = load_artifact(art, TGA_VLM_FILES[0])
    apply_delta(model, tensors)
    return model, processor


SYSTEMS.register(TGA_VLM, _tga_vlm)
DEPENDS[TGA_VLM] = (*DEPENDS["vlm"], *TGA_VLM_FILES)


def build_system(
    name: str, cache_dir: str | Path | None = None, art_dir: Path | None = None
) -> tuple[Any, Any]:
    """Rebuild organism system ``name`` in memory: ``(model, tokenizer_or_processor)``, float32, eval mode."""
    system = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    builder = SYSTEMS.get(system)
    return builder(Path(cache_dir) if cache_dir is not None else None, art_dir or artifacts_dir())


def resolve_organism(name: str, cache_dir: str | Path | None = None, art_dir: Path | None = None) -> Path:
    """Directory of ``organism:<system>`` as a saved HF model, building it on first use.

    The directory is keyed by the system name and the sha256 of the artefacts it depends on, so a changed
    artefact builds a fresh directory. The artefacts are verified against the manifest on every build.

    Raises:
        ModelLoadError: Unknown system (the message lists the known ones), missing artefacts or a checksum
            mismatch.
    """

    system = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    if system == BASE_LLM:

        return base_llm_dir(cache_dir)
    if system not in SYSTEMS:
        raise ModelLoadError(
            f"{name!r} is not an organism system; known: {[PREFIX + n for n in SYSTEMS.names()]}"
        )
    art = art_dir or artifacts_dir()
    manifest = read_manifest(art)
    deps = DEPENDS.get(system, tuple(sorted(manifest)))
    missing = [d for d in deps if d not in manifest]
    if missing:
        raise ModelLoadError(
            f"{name!r} needs artefacts {missing}, absent from {art}; run `vlsafe organism build`"
        )
    fingerprint: dict[str, Any] = {"system": system, "artifacts": {d: manifest[d]["sha256"] for d in deps}}
    digest = "-".join(fingerprint["artifacts"][d][:8] for d in deps)
    target = organism_cache_dir(cache_dir) / "built" / f"{system.replace('+', '_')}-{digest}"

    def _materialise(out: Path) -> None:
        model, proc = build_system(system, cache_dir, art)
        model.save_pretrained(str(out))
        proc.save_pretrained(str(out))
        (out / "vlsafe_organism.json").write_text(json.dumps(fingerprint, indent=1))

    try:
        cached_build(target, fingerprint, _materialise)
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def resolve_reference(name: str) -> Path:
    """The resolver of the ``organism:`` model-reference scheme (entry point ``vlsafe.model_references``):
    :func:`resolve_organism` with the default cache and the committed artefacts."""
    return resolve_organism(name)
