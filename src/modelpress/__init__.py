"""modelpress: compress PyTorch / Hugging Face models and measure what each method buys.

import modelpress as mp
model = mp.compress(model, "int8-dynamic")        # or a MethodConfig / Recipe
mp.save(model, "out/minilm-int8")
model = mp.load("out/minilm-int8")
mp.export("out/minilm-int8", "out/minilm-int8-onnx", data=adapter)  # ONNX, checked in ONNX Runtime
"""

from __future__ import annotations

import os

from .models.tv import install_import_fallback

install_import_fallback()  # before anything imports transformers (which imports torchvision)

from .api import artifact_bytes, compress, compression_notes, load, recipe_of, save
from .deploy import export
from .errors import ArtifactError, ConfigError, DataError, ModelpressError, SaveError
from .methods.base import CONFIGS, PRESETS, CompressContext, MethodConfig, register, register_config
from .methods.baseline.cast import CastConfig
from .methods.baseline.int8_dynamic import Int8DynamicConfig
from .recipe import Recipe

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "PRESETS",
    "ArtifactError",
    "CastConfig",
    "CompressContext",
    "ConfigError",
    "DataError",
    "Int8DynamicConfig",
    "MethodConfig",
    "ModelpressError",
    "Recipe",
    "SaveError",
    "__version__",
    "artifact_bytes",
    "compress",
    "compression_notes",
    "export",
    "load",
    "recipe_of",
    "register",
    "register_config",
    "save",
]
