"""Load a VLM or LLM by HF id or local directory into a :class:`ModelBundle`; find its decoder layers."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from vlsafe.core.errors import ConfigError, InputError, ModelLoadError
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.families import FAMILIES, Family, family_for_model_type
from vlsafe.models.fingerprint import is_weight_file
from vlsafe.models.processors import load_processor
from vlsafe.models.references import hub_id_error, is_hub_id, resolve_reference

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

#: Places where decoder layers live when ``get_decoder().layers`` does not exist (tried in order).
_LAYER_FALLBACKS = (
    "model.language_model.layers",
    "language_model.model.layers",
    "language_model.layers",
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {dtype!r}; use one of: auto, {', '.join(sorted(_DTYPES))}"
        ) from None


def _looks_like_path(name: str) -> bool:
    """A string that can only be meant as a local path (not an ``org/name`` hub id)."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or name.endswith(("/", os.sep))
        or (os.sep != "/" and os.sep in name)
    )


#: what a model folder may hold its weights in without ``allow_pickle`` (anything else is loaded by ``torch.load``)
SAFE_WEIGHTS = ".safetensors"

#: errors that transformers and safetensors raise on a missing, corrupt or mismatched checkpoint
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError, EOFError)


def _check_location(name: str, allow_pickle: bool = False) -> None:
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"model path {name!r} is a file; expected a model directory with config.json"
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {name!r} has no config.json")
        files = [p.name for p in path.iterdir() if p.is_file() and is_weight_file(p.name)]
        if not allow_pickle and not any(f.endswith(SAFE_WEIGHTS) for f in files):
            pickles = sorted(f for f in files if not f.endswith(".json"))
            if pickles:
                raise ModelLoadError(
                    f"model directory {name!r} holds weights only as {', '.join(pickles)}, not as safetensors; "
                    "vlsafe loads safetensors only (pickle files can run code when loaded). Convert the "
                    "checkpoint, or pass --allow-pickle (allow_pickle=True) to load it with "
                    "torch.load(weights_only=True)"
                )
        return
    if _looks_like_path(name):
        raise ModelLoadError(f"model directory {name!r} does not exist")


def _brief(exc: BaseException) -> str:
    """The first line of an exception's message (transformers' messages run over many lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _resolve_attr(root: Any, dotted: str) -> Any:
    obj = root
    for part in dotted.split("."):
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential, list, tuple)):
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


def decoder_layers(model: nn.Module, override: str | None = None) -> nn.ModuleList | list[nn.Module]:
    """Return the decoder layers of ``model``, in order.

    Discovery: ``model.get_decoder().layers``, then common attribute paths (``model.language_model.layers``,
    ``model.layers``, ``transformer.h``, ...). ``override`` is a dotted attribute path from the model
    (e.g. ``"model.language_model.layers"``) that wins over discovery.

    Raises:
        ConfigError: ``override`` does not name a non-empty list of modules.
        ModelLoadError: no decoder layers were found by rule.
    """
    if override:
        try:
            layers = _resolve_attr(model, override)
        except (AttributeError, IndexError) as exc:
            raise ConfigError(
                f"layers path {override!r} does not exist on {type(model).__name__}: {exc}"
            ) from None
        if not isinstance(layers, (nn.ModuleList, nn.Sequential, list, tuple)) or len(layers) == 0:
            raise ConfigError(
                f"layers path {override!r} must name a non-empty list of modules; got {type(layers).__name__}"
            )
        return layers if isinstance(layers, nn.ModuleList) else list(layers)
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError, TypeError):
            decoder = None
        layers = getattr(decoder, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    for path in _LAYER_FALLBACKS:
        try:
            layers = _resolve_attr(model, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ModelLoadError(
        f"could not find the decoder layers of {type(model).__name__} (tried get_decoder().layers and "
        f"{', '.join(_LAYER_FALLBACKS)}); pass layers_path='dotted.path.to.layers'"
    )


def _family_of(config: Any) -> Family:
    model_type = getattr(config, "model_type", None) or "(none)"
    try:
        return family_for_model_type(model_type)
    except ModelLoadError:
        vlm_types = {t for n in FAMILIES if n != "causal_lm" for t in FAMILIES.get(n).model_types}
        causal_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, "")
        # Decoder-only LLMs only: encoder models with an LM head (BertLMHeadModel, ...) stay unsupported.
        if causal_class.endswith("ForCausalLM") and model_type not in vlm_types:
            return family_for_model_type(model_type, allow_any_causal_lm=True)
        raise


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    layers_path: str | None = None,
    allow_pickle: bool = False,
) -> ModelBundle:
    """Load a supported VLM or causal LLM, with its processor/tokenizer and decoder layers.

    Args:
        name_or_path: a local model directory or an HF hub id.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a ``torch.dtype``; ``None`` keeps
            the transformers default.
        device: move the model there after loading (ignored when ``device_map`` is given).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"``).
        trust_remote_code: allow custom code from the checkpoint (off unless the user asks).
        layers_path: dotted attribute path of the decoder layers, overriding discovery.
        allow_pickle: also load weights stored as pickles (``pytorch_model.bin``, read with
            ``torch.load(weights_only=True)``); by default only safetensors load.

    Returns:
        A :class:`ModelBundle` in eval mode; the tokenizer pads on the left.

    Raises:
        ModelLoadError: missing directory, unsupported ``model_type`` (the message lists the supported
            families), weights only as pickles without ``allow_pickle``, or a checkpoint that cannot be read
            (corrupt or truncated safetensors, a config that does not match the weights).
    """

    name = str(name_or_path)
    name = resolve_reference(name)  # a registered reference (e.g. organism:vl) -> its local directory
    _check_location(name, allow_pickle)
    name = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        if is_hub_id(name) and isinstance(exc, OSError):  # not in the cache, hub unreachable or no such repo
            raise hub_id_error(name, exc) from exc
        raise ModelLoadError(f"could not read the model config of {name!r}: {_brief(exc)}") from exc
    family = _family_of(config)
    cls = AutoModelForCausalLM if family.name == "causal_lm" else family.load_class()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    resolved = _resolve_dtype(dtype)
    if resolved is not None:
        kwargs["dtype"] = resolved
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = cls.from_pretrained(name, **kwargs)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(
            f"could not load the {family.name} model weights from {name!r} (corrupt, truncated or not matching "
            f"config.json?): {_brief(exc)}"
        ) from exc
    if device is not None and device_map is None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    if family.is_vlm:
        processor: Any = load_processor(family, name, trust_remote_code=trust_remote_code)
    else:
        try:
            processor = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"could not load the tokenizer of {name!r}: {_brief(exc)}") from exc
    bundle = bundle_from_model(model, processor, name=name, layers_path=layers_path)
    logger.info("loaded %s (%s, %d layers) from %s", family.name, config.model_type, bundle.num_layers, name)
    return bundle


def bundle_from_model(
    model: nn.Module, processor: Any, *, name: str = "", layers_path: str | None = None
) -> ModelBundle:
    """A :class:`ModelBundle` around a model already in memory (e.g. built or trained in this process).

    Args:
        model: a supported VLM or causal LM (``model.config.model_type`` decides the family).
        processor: the VLM's processor, or the LLM's tokenizer.
        name: what the bundle reports as its origin.
        layers_path: dotted attribute path of the decoder layers, overriding discovery.

    The tokenizer is set to pad on the left (with the EOS token when it has no pad token), as
    :func:`load_model` leaves it.

    Raises:
        ModelLoadError: unsupported model type, or a VLM given a tokenizer instead of its processor.
    """
    config: Any = getattr(model, "config", None)
    family = _family_of(config)
    tokenizer = getattr(processor, "tokenizer", None) if family.is_vlm else processor
    if tokenizer is None:
        raise ModelLoadError(
            f"{family.name} model {name!r} needs its processor (with a tokenizer), got {type(processor).__name__}"
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return ModelBundle(
        model=model,
        tokenizer=tokenizer,
        processor=processor if family.is_vlm else None,
        family=family.name,
        layers=decoder_layers(model, layers_path),
        name=name,
        image_token_id=family.image_token_id(config),
        extra={"model_type": config.model_type, "layers_path": layers_path},
    )


def load_image(image: Any) -> Any:
    """Return ``image`` (a path or a PIL image) as a fully decoded PIL RGB image.

    Raises:
        InputError: the file is missing, is not an image, or is corrupt/truncated.
    """

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"image must be a file path or a PIL image; got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise InputError(f"image file {str(path)!r} does not exist")
    return open_image(path)


#: what PIL raises on files it cannot decode (a decompression bomb raises ``DecompressionBombError``, which is
#: no ``OSError``; malformed headers raise ``SyntaxError``, ``struct.error`` or others)
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, ZeroDivisionError)


def open_image(path: str | os.PathLike[str]) -> Any:
    """Decode the image file ``path`` fully into a PIL RGB image.

    Raises:
        InputError: the file is not an image, is corrupt or truncated, or is a decompression bomb (more pixels
            than ``PIL.Image.MAX_IMAGE_PIXELS`` allows); the message names the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise InputError(f"file {str(path)!r} cannot be read as an image (not an image format PIL knows)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"image file {str(path)!r} is refused as a decompression bomb ({exc}); a real image this large must "
            "be resized first"
        ) from None
    except MemoryError:
        raise InputError(f"image file {str(path)!r} does not fit in memory when decoded") from None
    except _IMAGE_ERRORS as exc:
        raise InputError(f"image file {str(path)!r} is corrupt or truncated: {exc}") from None
