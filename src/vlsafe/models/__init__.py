"""vlsafe.models: load VLMs/LLMs, find decoder layers, build variant inputs, make tiny offline models."""

from vlsafe.models.bundle import ModelBundle
from vlsafe.models.context import ContextOverflowError, context_length
from vlsafe.models.families import FAMILIES, Family, family_for_model_type, get_family, list_families
from vlsafe.models.fingerprint import bundle_fingerprint, directory_fingerprint
from vlsafe.models.images import make_variant_image, processor_image_size
from vlsafe.models.inputs import CAPTION_FORMAT, InputItem, build_inputs
from vlsafe.models.inputs_types import BatchInputs, PositionMasks, Variant
from vlsafe.models.loading import bundle_from_model, decoder_layers, load_image, load_model, open_image
from vlsafe.models.summary import image_tokens_per_image, inspect_model
from vlsafe.models.tiny import TINY_FAMILIES, VLM_FAMILIES, build_tiny

__all__ = [
    "FAMILIES",
    "Family",
    "family_for_model_type",
    "get_family",
    "list_families",
    "load_model",
    "bundle_from_model",
    "decoder_layers",
    "inspect_model",
    "image_tokens_per_image",
    "load_image",
    "open_image",
    "bundle_fingerprint",
    "directory_fingerprint",
    "context_length",
    "ContextOverflowError",
    "build_tiny",
    "TINY_FAMILIES",
    "VLM_FAMILIES",
    "build_inputs",
    "InputItem",
    "CAPTION_FORMAT",
    "make_variant_image",
    "processor_image_size",
    "ModelBundle",
    "Variant",
    "PositionMasks",
    "BatchInputs",
]
