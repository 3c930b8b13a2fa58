"""The manifest schema, declared once: ``load`` validates every manifest against it, and
docs/artifact-format.md's table and docs/manifest.schema.json are generated from it
(``python tools/manifest_docs.py --write``; a test keeps them in step).

The schema types and bounds each section (strict: no bool for an integer, no number for a
string, no unknown key). Values inside ``base.config`` / ``args`` / ``meta`` are JSON here
and checked where they are used (the model's config class, the module's constructor, the
format's ``validate``), with the stored tensors at hand.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from .formats.base import MAX_DIM

DTYPE_NAMES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int8",
    "uint8",
    "int16",
    "int32",
    "int64",
    "bool",
)
DIGEST_HEX_LEN = {"xxh3-128": 32, "sha256": 64}
MAX_NAME = 1000  # characters in a module or tensor name

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=r"^[^.\s]+(\.[^.\s]+)*$")]
ClassName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")]
Dim = Annotated[int, Field(ge=0, le=MAX_DIM)]
Shape = Annotated[list[Dim], Field(max_length=8)]
JsonObject = dict[str, JsonValue]
Hex = Annotated[str, Field(pattern=r"^[0-9a-f]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=False)


class Base(_Strict):
    library: Literal["transformers", "modelpress", "user"] = Field(
        description="who builds the base model: a transformers class, an architecture "
        "registered with `modelpress.models.register_architecture`, or the user (any other "
        "`nn.Module`: `load(path, model=instance)` loads into a fresh instance the user built)"
    )
    class_: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        alias="class",
        description="the class (transformers), registered name (modelpress), or the class's "
        "import path `module.QualName` (user; information only, never imported)",
    )
    config: JsonObject | None = Field(
        None, description="transformers: the model config (`config.to_dict()`, no `auto_map`)"
    )
    args: JsonObject | None = Field(None, description="modelpress: the architecture's constructor arguments")

    @model_validator(mode="after")
    def _one_of(self) -> Base:
        if self.library == "transformers" and (self.config is None or self.args is not None):
            raise ValueError("a transformers base holds a 'config' object and no 'args'")
        if self.library == "modelpress" and self.config is not None:
            raise ValueError("a modelpress base holds 'args', not a 'config'")
        if self.library == "user" and (self.config is not None or self.args is not None):
            raise ValueError("a user base holds only its class's import path, no 'config' or 'args'")
        return self


class FormatEntry(_Strict):
    format: ClassName = Field(description="registered format name (`affine`, `codebook`, `pq`, `sparse` ...)")
    version: Annotated[int, Field(ge=1, le=1000)] = Field(description="the format's layout version")
    shape: Shape = Field(description="logical shape of the weight it encodes")
    meta: JsonObject = Field(description="the format's metadata (bits, group size, coding ...)")


class ModuleEntry(_Strict):
    class_: ClassName = Field(alias="class", description="registered compressed-module name")
    version: Annotated[int, Field(ge=1, le=1000)] = Field(description="the module's version")
    args: JsonObject = Field(default_factory=dict, description="constructor arguments")
    formats: dict[Name, FormatEntry] = Field(default_factory=dict, description="its compressed weights")


class TensorSpec(_Strict):
    shape: Shape = Field(description="at most 8 dims, each in [0, 2^40]")
    dtype: Literal[DTYPE_NAMES] = Field(description="one of " + ", ".join(DTYPE_NAMES))  # type: ignore[valid-type]


class StructureModule(_Strict):
    class_: ClassName = Field(alias="class", description="`Linear`, `Conv2d`, `LayerNorm`, `Embedding` ...")
    args: JsonObject = Field(description="constructor dims")


class Structure(_Strict):
    modules: dict[Name, StructureModule] = Field(
        default_factory=dict, description="layers whose shapes differ from what `base` builds"
    )
    attributes: dict[Name, dict[ClassName, int]] = Field(
        default_factory=dict, description="changed integer attributes of a module (head counts ...)"
    )


class Digests(_Strict):
    algorithm: Literal["xxh3-128", "sha256"] = Field(description="`xxh3-128` (`sha256` in older artifacts)")
    tensors: dict[Name, Hex] = Field(description="stored key -> hex digest of its bytes")
    manifest: Hex = Field(description="hex digest of the manifest's canonical form")

    @model_validator(mode="after")
    def _lengths(self) -> Digests:
        n = DIGEST_HEX_LEN[self.algorithm]
        if len(self.manifest) != n or any(len(v) != n for v in self.tensors.values()):
            raise ValueError(f"{self.algorithm} digests are {n} hex digits")
        return self


class Manifest(_Strict):
    """manifest.json of a modelpress artifact."""

    format: Literal["modelpress"] = Field(description='`"modelpress"`')
    version: Literal[1] = Field(description="`1`, the layout version")
    base: Base = Field(description="the base model, built before the stored tensors are assigned")
    structure: Structure | None = Field(
        None,
        description="structured pruning: layers and attributes that differ from what `base` builds "
        "(students of distillation and dropped blocks need none: their own config builds them)",
    )
    recipe: list[JsonObject] = Field(
        description='the recipe applied: method configs (`{"method": "int8-dynamic", ...}`)'
    )
    modules: dict[Name, ModuleEntry] = Field(description="every compressed module by name")
    tensors: dict[Name, TensorSpec] = Field(description="every state-dict key (aliases included)")
    aliases: dict[Name, Name] = Field(description="tied key -> the key whose data is stored")
    rebuilt_buffers: dict[Name, Literal[DTYPE_NAMES]] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description="dtypes of buffers the constructor recomputes instead of storing (rotary "
        "frequencies, position ids), so a cast model is rebuilt exactly",
    )
    digests: Digests | None = Field(
        None,
        description="integrity: a digest of every stored tensor's bytes and of the manifest's "
        "canonical form (absent in artifacts of older versions)",
    )


_PHRASES = {
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "missing": "is missing",
    "extra_forbidden": "is not a known key",
}


def describe_error(e: ValidationError) -> str:
    """The first problem, as one phrase: ``'modules.fc1.version' must be an integer``."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    what = _PHRASES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ").removeprefix("Input ")
    what = what[0].lower() + what[1:] if what else what
    return f"'{loc}' {what}" if loc else what


def validate(manifest: Any) -> Manifest:
    """``Manifest`` of a parsed manifest; raises ``ValueError`` with ``describe_error``'s phrase."""
    try:
        return Manifest.model_validate(manifest)
    except ValidationError as e:
        raise ValueError(describe_error(e)) from None


# -- generated documentation ---------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "modelpress-manifest-v1"
    return schema


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return "JSON value" if name == "JsonValue" else name
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"] if p.get("type") != "null")
    if "const" in prop:
        return json.dumps(prop["const"])
    if "enum" in prop:
        return " / ".join(json.dumps(v) for v in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "array":
        return "list of " + _type_of(prop.get("items", {}))
    if kind == "object":
        values = prop.get("additionalProperties")
        if not isinstance(values, dict) and prop.get("patternProperties"):
            values = next(iter(prop["patternProperties"].values()))
        if isinstance(values, dict):
            return "name → " + _type_of(values)
    if kind == "integer":
        lo, hi = prop.get("minimum"), prop.get("maximum")
        return f"integer in [{lo}, {hi}]" if lo is not None and hi is not None else "integer"
    return str(kind)


def _rows(prefix: str, schema: dict[str, Any], descriptions: dict[str, str | None]) -> list[str]:
    required = set(schema.get("required", []))
    return [
        f"| `{prefix}{key}` | {'yes' if key in required else 'no'} | {_type_of(prop)} | "
        f"{descriptions.get(key) or ''} |"
        for key, prop in schema.get("properties", {}).items()
    ]


def markdown_table() -> str:
    """The tables of manifest keys in docs/artifact-format.md: the top level, then each
    object type it refers to."""
    schema = json_schema()
    models = {
        m.__name__: m
        for m in (Base, FormatEntry, ModuleEntry, TensorSpec, StructureModule, Structure, Digests)
    }

    def descs(model: type[BaseModel]) -> dict[str, str | None]:
        return {(f.alias or k): f.description for k, f in model.model_fields.items()}

    out = ["| key | required | type | content |", "|---|---|---|---|"]
    out += _rows("", schema, descs(Manifest))
    for name, d in schema.get("$defs", {}).items():
        if name in models:
            out += ["", f"*{name}*", "", "| key | required | type | content |", "|---|---|---|---|"]
            out += _rows("", d, descs(models[name]))
    return "\n".join(out)


BEGIN = "<!-- manifest-schema: generated by `python tools/manifest_docs.py --write`; do not edit -->"
END = "<!-- manifest-schema: end -->"


def render_docs(text: str) -> str:
    """``text`` (docs/artifact-format.md) with the generated table between the markers."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError("the generated-table markers are missing")
    return pattern.sub(lambda _: BEGIN + "\n" + markdown_table() + "\n" + END, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write (or --check) the generated manifest docs.")
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    md, js = args.docs / "artifact-format.md", args.docs / "manifest.schema.json"
    want_md = render_docs(md.read_text())
    want_js = json.dumps(json_schema(), indent=1) + "\n"
    if args.write:
        md.write_text(want_md)
        js.write_text(want_js)
        return 0
    stale = [str(p) for p, want in ((md, want_md), (js, want_js)) if not p.exists() or p.read_text() != want]
    if stale:
        print("stale: " + ", ".join(stale) + " (run python tools/manifest_docs.py --write)")
        return 1
    return 0
