"""modelpress: compress PyTorch / Hugging Face models and measure what each method buys.

import modelpress as mp
model = mp.compress(model, "int8-dynamic")        # or a MethodConfig / Recipe
mp.save(model, "out/minilm-int8")
model = mp.load("out/minilm-int8")

# your own nn.Module and DataLoader: no adapter to write
small = mp.compress(net, "gptq-4bit", data=loader)   # + loss_fn= / eval_fn= where a method needs them
mp.save(small, "out/net-gptq"); small = mp.load("out/net-gptq", model=Net())
result = mp.bench(net, "fp32,int8-dynamic,int4-g128", data=loader, eval_fn=accuracy)
mp.export("out/minilm-int8", "out/minilm-int8-onnx", data=adapter)  # ONNX, checked in ONNX Runtime
"""

from __future__ import annotations

import os

from .models.tv import install_import_fallback

install_import_fallback()  # before anything imports transformers (which imports torchvision)

from . import bench
from .api import artifact_bytes, compress, compression_notes, load, recipe_of, save
from .bench.user import BenchResult
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
    "BenchResult",
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
    "bench",
    "compress",
    "compression_notes",
    "export",
    "load",
    "recipe_of",
    "register",
    "register_config",
    "save",
]
