"""Model references: what a model name given to ``load_model``, a merge config or a weight diff may be.

A name is a local directory, a Hugging Face hub id (``org/name``), or a *registered reference*
``scheme:rest`` (e.g. ``organism:vl``, the model organism's systems). Schemes are resolved by functions in
:data:`REFERENCES` that return a local model directory. Packages add schemes through the entry-point group
``vlsafe.model_references`` (``scheme = "package.module:resolver"``), which the registry imports only when a
name of that scheme is resolved; code can also call ``REFERENCES.register(scheme, resolver)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download

from vlsafe.core.errors import ModelLoadError
from vlsafe.core.registry import Registry

__all__ = ["REFERENCES", "hub_id_error", "is_hub_id", "reference_scheme", "resolve_checkpoint", "resolve_reference"]

#: scheme -> resolver(name) returning a local model directory
REFERENCES: Registry[Callable[[str], str | Path]] = Registry(
    "model reference scheme", entry_points="vlsafe.model_references"
)
_SCHEME = re.compile(r"^([a-z][a-z0-9_-]*):(?!//)(.+)$")
#: files fetched from the hub by :func:`resolve_checkpoint`: weights as safetensors, configs, tokenizers
HUB_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "tokenizer*")


def reference_scheme(name: str | Path) -> str | None:
    """The scheme of ``name`` when it has the form ``scheme:rest`` and is not an existing path, else ``None``."""
    text = str(name)
    match = _SCHEME.match(text)
    if match is None or Path(text).expanduser().exists():
        return None
    return match.group(1)


def resolve_reference(name: str | Path) -> str:
    """``name`` with a registered reference replaced by the local directory its resolver returns.

    Raises:
        ModelLoadError: ``name`` has a ``scheme:`` that no package registers (the message lists the known
            ones), or the resolver fails with a vlsafe error.
    """
    scheme = reference_scheme(name)
    if scheme is None:
        return str(name)
    if scheme not in REFERENCES:
        known = ", ".join(f"{s}:" for s in REFERENCES.names()) or "(none installed)"
        raise ModelLoadError(
            f"model reference {str(name)!r}: no package registers the scheme {scheme + ':'!r}; known: {known}"
        )
    return str(REFERENCES.get(scheme)(str(name)))


def is_hub_id(name: str | Path) -> bool:
    """Whether ``name`` has the form of a hub id ``org/name`` and is no existing local path."""
    text = str(name)
    return (
        text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and not text.endswith("/")
        and not Path(text).expanduser().exists()
    )


def hub_id_error(ref: str, exc: BaseException) -> ModelLoadError:
    """A one-line error for hub id ``ref`` that could not be read, saying where it was looked for and how to
    fetch it (``exc``: the error of the lookup; only its first line is kept)."""
    lines = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    offline = " with HF_HUB_OFFLINE=1" if hub_constants.HF_HUB_OFFLINE else ""
    return ModelLoadError(
        f"model {ref!r} is not a local directory and could not be read from the Hugging Face hub or its cache "
        f"{hub_constants.HF_HUB_CACHE}{offline} ({reason}); fetch it where the hub is reachable with "
        f"`hf download {ref}` (HF_HOME / HF_HUB_CACHE point at the cache to fill), or pass its local directory"
    )


def resolve_checkpoint(ref: str | Path) -> Path:
    """A local directory (or single ``.safetensors`` file) holding the safetensors checkpoint ``ref``.

    ``ref`` is a registered reference (:func:`resolve_reference`), a local path or a hub id; hub ids are fetched
    with ``huggingface_hub.snapshot_download`` restricted to :data:`HUB_PATTERNS` (never pickles).

    Raises:
        ModelLoadError: the path does not exist and the hub lookup fails, or no safetensors are there.
    """
    ref = resolve_reference(ref)
    path = Path(ref).expanduser()
    if not path.exists():
        if ref.count("/") != 1 or ref.startswith((".", "/")):
            raise ModelLoadError(f"checkpoint {ref!r} is not a local directory nor a hub id 'org/name'")
        try:
            path = Path(snapshot_download(ref, allow_patterns=list(HUB_PATTERNS)))
        except Exception as exc:  # network, auth, missing repo, offline without a cached snapshot
            raise hub_id_error(ref, exc) from exc
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if not path.is_dir() or not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"checkpoint {ref!r} ({path}) holds no *.safetensors file (only safetensors load)")
    return path
