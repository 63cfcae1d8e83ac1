"""JSON schema of a bundle's ``configs/metadata.json``, written from the MONAI Bundle Specification.

MONAI's ``verify_metadata`` downloads the official schema (``meta_schema_20240725.json``) from GitHub, which cannot be
reached offline. This schema encodes the specification's required fields (docs.monai.io "MONAI Bundle
Specification", section metadata.json) so the check runs anywhere; it is deliberately as strict as the specification
for required fields and leaves extra fields allowed, as the official schema does.
"""

from __future__ import annotations

# "0.1.0", "1.2.3-rc1": the model zoo keeps semantic versions in `version` and the `changelog` keys.
SEMVER = r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$"
# Spatial sizes: an int, "*" (any size), or an expression in n / p such as "16*n" or "2**p" (verify_net_in_out).
SPATIAL_SIZE = {"oneOf": [{"type": "integer", "minimum": 1},
                          {"type": "string", "pattern": r"^(\*|[0-9np*+\- ()]+)$"}]}

TENSOR_FORMAT = {
    "type": "object",
    "required": ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
                 "channel_def"],
    "properties": {
        "type": {"type": "string", "enum": ["image", "tensor", "series", "probabilities", "number", "string"]},
        "format": {"type": "string", "minLength": 1},
        "modality": {"type": "string"},
        "num_channels": {"type": "integer", "minimum": 0},
        "spatial_shape": {"type": "array", "items": SPATIAL_SIZE},
        "dtype": {"type": "string", "enum": ["float16", "float32", "float64", "bfloat16", "uint8", "int8", "int16",
                                             "int32", "int64", "bool"]},
        "value_range": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

METADATA_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "mri_ssl bundle metadata (MONAI Bundle Specification)",
    "type": "object",
    "required": ["version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                 "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"],
    "properties": {
        "schema": {"type": "string"},
        "version": {"type": "string", "pattern": SEMVER},
        "changelog": {"type": "object", "minProperties": 1,
                      "propertyNames": {"pattern": SEMVER}, "additionalProperties": {"type": "string", "minLength": 1}},
        "monai_version": {"type": "string", "minLength": 1},
        "pytorch_version": {"type": "string", "minLength": 1},
        "numpy_version": {"type": "string", "minLength": 1},
        "required_packages_version": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
        "optional_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "name": {"type": "string"},
        "task": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "authors": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string"}}]},
        "copyright": {"type": "string", "minLength": 1},
        "data_source": {"type": "string"},
        "data_type": {"type": "string"},
        "image_classes": {"type": "string"},
        "label_classes": {"type": "string"},
        "pred_classes": {"type": "string"},
        "eval_metrics": {"type": "object"},
        "intended_use": {"type": "string"},
        "references": {"type": "array", "items": {"type": "string"}},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "minProperties": 1, "additionalProperties": TENSOR_FORMAT},
                "outputs": {"type": "object", "minProperties": 1, "additionalProperties": TENSOR_FORMAT},
            },
        },
    },
}
