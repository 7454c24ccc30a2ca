"""Provider schemas: the jsii assembly inside each cdktf wheel, compacted and cached as JSON."""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.terraform_gate.providers import CACHE_FORMAT, SCHEMA_DIR, ProviderPackage

LINK_NAME = re.compile(r"Docs at Terraform Registry: \{@link \S+#(\w+) ")
REPRESENTS = re.compile(
    r"Represents a \{@link https://registry\.terraform\.io/providers/([\w-]+/[\w-]+)/([\w.-]+)/docs/"
    r"(resources|data-sources)/\w+ (\w+)\}"
)
POSSIBLE_VALUES = re.compile(r"Possible values: \[([^\]]*)\]")
PRIMITIVES = {
    "string": "string",
    "number": "number",
    "boolean": "bool",
    "any": "any",
    "json": "any",
    "date": "string",
}


# ---------------------------------------------------------------------------
# Schemas: jsii assembly -> compact JSON
# ---------------------------------------------------------------------------


@dataclass
class ProviderSchema:
    """The compact schema of one provider version.

    ``structs`` maps an id to ``{"a": {argument: [type, required, allowed values or None]},
    "b": {block: [struct id, required, single, written as a block]}}``; ``resources`` and
    ``data_sources`` map a type name to the id of its top-level struct.
    """

    source: str
    version: str
    resources: dict[str, str]
    data_sources: dict[str, str]
    structs: dict[str, dict[str, Any]]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _hcl_name(prop: dict[str, Any]) -> str:
    """The HCL name of a jsii property: the anchor of its registry link, which is the provider's
    own attribute name (jsii renames some, e.g. ``count`` -> ``countAttribute``)."""
    docs = prop.get("docs", {})
    match = LINK_NAME.search(f"{docs.get('summary', '')} {docs.get('remarks', '')}")
    return match.group(1) if match else _snake(prop["name"])


def _allowed_values(prop: dict[str, Any]) -> list[str] | None:
    docs = prop.get("docs", {})
    match = POSSIBLE_VALUES.search(f"{docs.get('summary', '')} {docs.get('remarks', '')}")
    return re.findall(r'"([^"]*)"', match.group(1)) if match else None


def _classify(jtype: dict[str, Any], types: dict[str, Any]) -> tuple[str, str, bool]:
    """("attr", type, _) or ("block", struct fqn, single) for a jsii type reference."""
    if "union" in jtype:
        members = [t for t in jtype["union"]["types"] if t.get("fqn") != "cdktf.IResolvable"]
        if len(members) != 1:
            return "attr", "any", False
        jtype = members[0]
    if "primitive" in jtype:
        return "attr", PRIMITIVES.get(jtype["primitive"], "any"), False
    if "collection" in jtype:
        kind, element = jtype["collection"]["kind"], jtype["collection"]["elementtype"]
        if kind == "array":
            inner = _classify(element, types)
            return ("block", inner[1], False) if inner[0] == "block" else ("attr", "list", False)
        return "attr", "map", False
    fqn = jtype.get("fqn", "")
    if types.get(fqn, {}).get("datatype"):
        return "block", fqn, True
    return "attr", "any", False


def _compact(assembly: dict[str, Any]) -> ProviderSchema:
    types: dict[str, Any] = assembly["types"]
    structs: dict[str, dict[str, Any]] = {}
    prefix = assembly["name"] + "."

    def short(fqn: str) -> str:
        return fqn.removeprefix(prefix)

    def add(fqn: str) -> str:
        sid = short(fqn)
        if sid in structs:
            return sid
        struct: dict[str, Any] = {"a": {}, "b": {}}
        structs[sid] = struct
        for prop in types[fqn].get("properties", []):
            name, required = _hcl_name(prop), not prop.get("optional", False)
            kind, what, single = _classify(prop["type"], types)
            if kind == "block":
                written_as_block = prop.get("docs", {}).get("summary", "").endswith(" block.")
                struct["b"][name] = [add(what), required, single, written_as_block]
            else:
                struct["a"][name] = [what, required, _allowed_values(prop)]
        return sid

    schema = ProviderSchema(source="", version="", resources={}, data_sources={}, structs=structs)
    for t in types.values():
        if t.get("kind") != "class":
            continue
        match = REPRESENTS.search(t.get("docs", {}).get("summary", ""))
        params = t.get("initializer", {}).get("parameters", [])
        config = next((p for p in params if p["name"] == "config"), None)
        if not match or config is None:
            continue
        schema.source, schema.version = match.group(1), match.group(2)
        target = schema.resources if match.group(3) == "resources" else schema.data_sources
        target[match.group(4)] = add(config["type"]["fqn"])
    return schema


def read_assembly(wheel: Path) -> dict[str, Any]:
    """The jsii assembly (``package/.jsii`` in ``_jsii/*.jsii.tgz``) of a cdktf provider wheel."""
    with zipfile.ZipFile(wheel) as zf:
        tgz = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(zf.read(tgz))) as tar:
            member = tar.extractfile("package/.jsii")
            assert member is not None
            return json.loads(member.read())


def load_schema(
    package: ProviderPackage, schema_dir: Path = SCHEMA_DIR, refresh: bool = False
) -> ProviderSchema:
    """The compact schema of ``package``, from the cache or (``refresh``) extracted from its wheel."""
    cache = schema_dir / package.cache_name
    if cache.is_file() and not refresh:
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("format") == CACHE_FORMAT:
            return ProviderSchema(**data["schema"])
    wheels = sorted((schema_dir / "wheels").glob(package.wheel_glob))
    if not wheels:
        raise SchemaUnavailable(
            f"no wheel {package.dist}=={package.dist_version} in {schema_dir / 'wheels'}: run `make tools`"
        )
    schema = _compact(read_assembly(wheels[0]))
    if (schema.source, schema.version) != (package.source, package.version):
        raise SchemaUnavailable(
            f"{wheels[0].name} describes {schema.source} {schema.version}, "
            f"not {package.source} {package.version}"
        )
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"format": CACHE_FORMAT, "schema": schema.__dict__}, separators=(",", ":")),
        encoding="utf-8",
    )
    tmp.replace(cache)
    return schema


class SchemaUnavailable(RuntimeError):
    """A provider schema package is missing or is not the pinned version."""


