"""Check a Terraform module against the exact schemas of its pinned providers.

`terraform validate` needs the providers, which cannot always be downloaded (CI sandboxes,
offline machines). The providers' schemas also ship in PyPI packages: the prebuilt CDK for
Terraform bindings (``cdktf-cdktf-provider-google==16.12.1`` is generated from
hashicorp/google 6.50.0) hold a jsii assembly describing every resource's configuration: each
argument and nested block, its type, whether it is required, and its documentation, which
for many enum-like fields lists the allowed values ("Possible values: [...]"). This gate reads
that JSON (never imports the packages) and checks every ``resource`` and ``data`` block:

* unknown arguments and blocks, blocks written as arguments and the reverse;
* missing required arguments and blocks;
* literal values of the wrong type (a string where a number or bool is wanted, ...);
  expressions it cannot evaluate are skipped;
* literal values outside the allowed set, from the docs or from ``API_ENUMS`` (enums the
  provider passes through to an API without documenting them);
* resource types that do not exist in the provider that serves them, and provider pins in
  ``versions.tf`` that differ from the schema versions.

Usage::

    python -m tools.terraform_gate terraform/        # one line per problem, exit 1 if any
    python -m tools.terraform_gate --build-schemas   # extract and cache the schemas only

The wheels are downloaded by ``make tools`` (``requirements/provider-schemas.txt``) into
``build/provider-schemas/wheels``; the compact schemas are cached next to them, so a repeat
run reads ~5 MB of JSON instead of ~200 MB.
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import re
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = Path(os.environ.get("TERRAFORM_GATE_SCHEMA_DIR", ROOT / "build" / "provider-schemas"))
CACHE_FORMAT = 1


@dataclass(frozen=True)
class ProviderPackage:
    """A provider and the PyPI wheel whose jsii assembly holds its schema."""

    local_name: str  # the name in required_providers and provider = ...
    source: str  # registry source, e.g. hashicorp/google
    version: str  # provider version the wheel is generated from
    dist: str  # PyPI distribution
    dist_version: str

    @property
    def wheel_glob(self) -> str:
        return f"{self.dist.replace('-', '_')}-{self.dist_version}-*.whl"

    @property
    def cache_name(self) -> str:
        return f"{self.dist}-{self.dist_version}.json"


PACKAGES: dict[str, ProviderPackage] = {
    p.local_name: p
    for p in (
        ProviderPackage("google", "hashicorp/google", "6.50.0", "cdktf-cdktf-provider-google", "16.12.1"),
        ProviderPackage(
            "google-beta", "hashicorp/google-beta", "6.50.0", "cdktf-cdktf-provider-google-beta", "16.12.1"
        ),
        ProviderPackage("archive", "hashicorp/archive", "2.7.1", "cdktf-cdktf-provider-archive", "11.0.1"),
        ProviderPackage("time", "hashicorp/time", "0.13.1", "cdktf-cdktf-provider-time", "11.0.1"),
    )
}

# Allowed values the provider schema does not document but the API (or the provider's own
# validation) enforces: (resource type, argument path) -> (values, source).
API_ENUMS: dict[tuple[str, str], tuple[frozenset[str], str]] = {
    ("google_dataflow_flex_template_job", "autoscaling_algorithm"): (
        frozenset(
            {"AUTOSCALING_ALGORITHM_UNKNOWN", "AUTOSCALING_ALGORITHM_NONE", "AUTOSCALING_ALGORITHM_BASIC"}
        ),
        "Dataflow API v1b3 FlexTemplateRuntimeEnvironment.autoscalingAlgorithm (enum AutoscalingAlgorithm); "
        "THROUGHPUT_BASED is a pipeline option, not this field (hashicorp/terraform-provider-google#17570)",
    ),
    ("google_dataflow_flex_template_job", "ip_configuration"): (
        frozenset({"WORKER_IP_PUBLIC", "WORKER_IP_PRIVATE"}),
        'provider docs: \'Options are "WORKER_IP_PUBLIC" or "WORKER_IP_PRIVATE"\'',
    ),
    ("google_dataflow_flex_template_job", "on_delete"): (
        frozenset({"drain", "cancel"}),
        'provider schema description \'One of "drain" or "cancel"\', missing from the cdktf docs',
    ),
    ("google_dataflow_job", "on_delete"): (
        frozenset({"drain", "cancel"}),
        'provider schema description \'One of "drain" or "cancel"\', missing from the cdktf docs',
    ),
    ("google_storage_bucket", "lifecycle_rule.action.type"): (
        frozenset({"Delete", "SetStorageClass", "AbortIncompleteMultipartUpload"}),
        "provider docs: 'Supported values include: Delete, SetStorageClass and "
        "AbortIncompleteMultipartUpload'",
    ),
}

# Meta-arguments and meta-blocks Terraform itself handles, by block kind.
META_ARGUMENTS = {
    "resource": {"count", "for_each", "depends_on", "provider"},
    "data": {"count", "for_each", "depends_on", "provider"},
}
META_BLOCKS = {"resource": {"lifecycle", "provisioner", "connection"}, "data": {"lifecycle"}}
LIFECYCLE_KEYS = {
    "resource": {
        "create_before_destroy",
        "prevent_destroy",
        "ignore_changes",
        "replace_triggered_by",
        "precondition",
        "postcondition",
    },
    "data": {"precondition", "postcondition"},
}
DYNAMIC_KEYS = {"for_each", "iterator", "labels", "content"}

# Resources Terraform provides itself (terraform.io/builtin/terraform).
BUILTIN_RESOURCES: dict[str, dict[str, Any]] = {
    "terraform_data": {
        "a": {"input": ["any", False, None], "triggers_replace": ["any", False, None]},
        "b": {},
    },
}

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


_LOADED: dict[tuple[str, Path], ProviderSchema] = {}


# ---------------------------------------------------------------------------
# HCL values
# ---------------------------------------------------------------------------

CONDITIONAL = re.compile(r'^\$\{[^"?]+\?\s*"([^"$]*)"\s*:\s*"([^"$]*)"\s*\}$')


def _is_block(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) and v.get("__is_block__") for v in value)
    )


def _literal_string(value: Any) -> str | None:
    """The content of a quoted literal string without interpolation, else None."""
    if (
        isinstance(value, str)
        and len(value) >= 2
        and value[0] == value[-1] == '"'
        and "${" not in value
        and not value.startswith('"<<')
    ):
        return json.loads(value) if "\\" in value else value[1:-1]
    return None


def _literal_choices(value: Any) -> list[str]:
    """Literal strings a value can take: itself, or both branches of ``c ? "a" : "b"``."""
    literal = _literal_string(value)
    if literal is not None:
        return [literal]
    match = CONDITIONAL.match(value) if isinstance(value, str) else None
    return [match.group(1), match.group(2)] if match else []


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"the string {value}"


def _type_problem(wanted: str, value: Any) -> str | None:
    """Why a literal value cannot convert to the wanted type (None if it can or is unknown)."""
    literal = _literal_string(value)
    if wanted == "number":
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            return f"expects a number, got {_describe(value)}"
        if literal is not None:
            try:
                float(literal)
            except ValueError:
                return f"expects a number, got {_describe(value)}"
    elif wanted == "bool":
        if isinstance(value, (int, float, list, dict)) and not isinstance(value, bool):
            return f"expects a bool, got {_describe(value)}"
        if literal is not None and literal not in ("true", "false"):
            return f"expects a bool, got {_describe(value)}"
    elif wanted == "string":
        if isinstance(value, (list, dict)):
            return f"expects a string, got {_describe(value)}"
    elif wanted == "list":
        if isinstance(value, (bool, int, float, dict)) or literal is not None:
            return f"expects a list, got {_describe(value)}"
    elif wanted == "map":
        if isinstance(value, (bool, int, float, list)) or literal is not None:
            return f"expects a map, got {_describe(value)}"
    return None


# ---------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------


@dataclass
class Block:
    """One ``resource`` or ``data`` block."""

    file: str
    kind: str  # resource | data
    type: str
    name: str
    body: dict[str, Any]

    @property
    def address(self) -> str:
        return f"{'data.' if self.kind == 'data' else ''}{self.type}.{self.name}"


@dataclass
class Module:
    """The blocks of one directory of .tf files."""

    path: Path
    blocks: list[Block] = field(default_factory=list)
    required_providers: dict[str, tuple[str, str, str]] = field(
        default_factory=dict
    )  # name -> (source, version, file)


def _unquote(label: str) -> str:
    return label[1:-1] if len(label) >= 2 and label[0] == label[-1] == '"' else label


def load_module(path: Path, display_root: Path | None = None) -> Module:
    """Parse every .tf file of one directory."""
    import hcl2  # the checker needs python-hcl2; schema extraction does not
    from hcl2 import SerializationOptions

    options = SerializationOptions(strip_string_quotes=False, explicit_blocks=True, with_comments=False)
    module = Module(path=path)
    for tf in sorted(path.glob("*.tf")):
        shown = str(tf.relative_to(display_root)) if display_root else tf.name
        doc = hcl2.loads(tf.read_text(encoding="utf-8"), serialization_options=options)
        for kind in ("resource", "data"):
            for group in doc.get(kind, []):
                for rtype, by_name in group.items():
                    if rtype.startswith("__"):
                        continue
                    for name, body in by_name.items():
                        if not name.startswith("__"):
                            module.blocks.append(Block(shown, kind, _unquote(rtype), _unquote(name), body))
        for terraform in doc.get("terraform", []):
            for required in terraform.get("required_providers", []):
                for local, spec in required.items():
                    if isinstance(spec, dict):
                        module.required_providers[local] = (
                            _unquote(str(spec.get("source", ""))),
                            _unquote(str(spec.get("version", ""))),
                            shown,
                        )
    return module


def module_dirs(root: Path) -> list[Path]:
    """``root`` and every directory below it holding .tf files (local modules)."""
    skip = {".terraform", ".build", "node_modules"}
    return sorted({p.parent for p in root.rglob("*.tf") if not skip & set(p.relative_to(root).parts)})


# ---------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------


@dataclass
class Checker:
    """Checks blocks against provider schemas, collecting ``file:address: message`` lines."""

    schema_dir: Path = SCHEMA_DIR
    problems: list[str] = field(default_factory=list)
    pinned: set[str] | None = None  # providers in the root module's required_providers

    def schema(self, provider: str) -> ProviderSchema:
        key = (provider, self.schema_dir)
        if key not in _LOADED:  # read once per process
            _LOADED[key] = load_schema(PACKAGES[provider], self.schema_dir)
        return _LOADED[key]

    def report(self, block: Block | None, where: str, message: str) -> None:
        address = f"{block.file}:{block.address}" if block else where
        self.problems.append(f"{address}: {message}")

    # --- modules

    def check_module(self, module: Module) -> None:
        for local, (source, version, file) in module.required_providers.items():
            package = PACKAGES.get(local)
            if package and (source != package.source or version.lstrip("= ") != package.version):
                self.report(
                    None,
                    f"{file}:terraform.required_providers.{local}",
                    f"pinned to {source} {version!r} but the schema gate checks {package.source} "
                    f"= {package.version} (update requirements/provider-schemas.txt too)",
                )
        for block in module.blocks:
            self.check_block(block, module)

    def provider_of(self, block: Block, module: Module) -> str | None:
        """Local provider name serving a block: its provider meta-argument or its type prefix."""
        explicit = block.body.get("provider")
        if isinstance(explicit, str):
            return explicit.strip("${}").split(".")[0]
        prefix = block.type.split("_")[0]
        return prefix if prefix in PACKAGES or prefix in module.required_providers else None

    def check_block(self, block: Block, module: Module) -> None:
        if block.kind == "resource" and block.type in BUILTIN_RESOURCES:
            self.check_body(block, BUILTIN_RESOURCES[block.type], None, block.body, "", top=True)
            return
        provider = self.provider_of(block, module)
        if provider not in PACKAGES:
            self.report(
                block,
                "",
                f"no schema for provider {provider!r}: add its package to tools/terraform_gate.py PACKAGES",
            )
            return
        if self.pinned is not None and provider not in self.pinned:
            self.report(
                block, "", f"provider {provider} is not pinned in the root module's required_providers"
            )
        schema = self.schema(provider)
        types = schema.resources if block.kind == "resource" else schema.data_sources
        sid = types.get(block.type)
        if sid is None:
            hint = ""
            for other in PACKAGES:
                if other != provider:
                    other_types = (
                        self.schema(other).resources
                        if block.kind == "resource"
                        else self.schema(other).data_sources
                    )
                    if block.type in other_types:
                        hint = f" (it exists in {other}: set provider = {other})"
                        break
            kind = "resource" if block.kind == "resource" else "data source"
            self.report(
                block, "", f"{block.type} is not a {kind} type of {schema.source} {schema.version}{hint}"
            )
            return
        self.check_body(block, schema.structs[sid], schema, block.body, "", top=True)

    # --- bodies

    def check_body(
        self,
        block: Block,
        struct: dict[str, Any],
        schema: ProviderSchema | None,
        body: dict[str, Any],
        path: str,
        top: bool = False,
    ) -> None:
        attrs: dict[str, list[Any]] = struct["a"]
        blocks: dict[str, list[Any]] = struct["b"]
        present: set[str] = set()
        for key, value in body.items():
            if key.startswith("__"):
                continue
            where = f"{path}{key}"
            if top and key in META_ARGUMENTS[block.kind]:
                continue
            if top and key in META_BLOCKS[block.kind]:
                if key == "lifecycle":
                    self.check_lifecycle(block, value)
                continue
            if key == "dynamic":
                for dyn in value:
                    for label, dyn_body in dyn.items():
                        if label.startswith("__"):
                            continue
                        name = _unquote(label)
                        present.add(name)
                        self.check_dynamic(block, blocks, schema, name, dyn_body, path)
                continue
            present.add(key)
            if key in attrs:
                if _is_block(value):
                    self.report(block, "", f"{where} is an argument, not a block: write {key} = ...")
                    continue
                self.check_value(block, where, attrs[key], value)
            elif key in blocks:
                self.check_nested(block, blocks[key], schema, where, value)
            else:
                self.report(block, "", self.unknown(struct, schema, block, key, where, value))
        for name, (_, required, _) in attrs.items():
            if required and name not in present:
                self.report(block, "", f"missing required argument {path}{name}")
        for name, spec in blocks.items():
            if spec[1] and name not in present:
                self.report(block, "", f"missing required block {path}{name}")

    def check_nested(
        self, block: Block, spec: list[Any], schema: ProviderSchema | None, where: str, value: Any
    ) -> None:
        sid, _, single, written_as_block = spec
        struct = schema.structs[sid] if schema else {"a": {}, "b": {}}
        if _is_block(value):
            if single and len(value) > 1:
                self.report(block, "", f"{where} may appear at most once, found {len(value)}")
            for item in value:
                self.check_body(block, struct, schema, item, f"{where}.")
        elif written_as_block:
            self.report(
                block, "", f"{where} is a block, not an argument: write {where.rsplit('.', 1)[-1]} {{ ... }}"
            )
        elif isinstance(value, dict):
            self.check_body(block, struct, schema, value, f"{where}.")

    def check_dynamic(
        self,
        block: Block,
        blocks: dict[str, list[Any]],
        schema: ProviderSchema | None,
        name: str,
        body: dict[str, Any],
        path: str,
    ) -> None:
        where = f'{path}dynamic "{name}"'
        if name not in blocks:
            self.report(block, "", f"{where}: {name} is not a block of {path.rstrip('.') or block.type}")
            return
        for key in body:
            if not key.startswith("__") and key not in DYNAMIC_KEYS:
                self.report(
                    block,
                    "",
                    f"{where}: unknown argument {key} (dynamic takes for_each, iterator, labels and content)",
                )
        contents = body.get("content")
        if not _is_block(contents):
            self.report(block, "", f"{where}: missing content block")
            return
        struct = schema.structs[blocks[name][0]] if schema else {"a": {}, "b": {}}
        for item in contents:
            self.check_body(block, struct, schema, item, f"{path}{name}.")

    def check_lifecycle(self, block: Block, value: Any) -> None:
        for item in value if isinstance(value, list) else []:
            for key in item:
                if not key.startswith("__") and key not in LIFECYCLE_KEYS[block.kind]:
                    self.report(block, "", f"lifecycle: unknown argument {key}")

    def check_value(self, block: Block, where: str, spec: list[Any], value: Any) -> None:
        wanted, _, allowed = spec
        problem = _type_problem(wanted, value)
        if problem:
            self.report(block, "", f"{where} {problem}")
            return
        plain_path = re.sub(r'dynamic "(\w+)"', r"\1", where)
        extra = API_ENUMS.get((block.type, plain_path))
        values, source = (
            extra if extra else (frozenset(allowed), "provider schema docs") if allowed else (None, "")
        )
        if not values:
            return
        literals = (
            [c for v in value for c in _literal_choices(v)]
            if isinstance(value, list)
            else _literal_choices(value)
        )
        for literal in literals:
            if literal not in values:
                self.report(
                    block, "", f'{where} = "{literal}" is not one of {", ".join(sorted(values))} ({source})'
                )

    def unknown(
        self,
        struct: dict[str, Any],
        schema: ProviderSchema | None,
        block: Block,
        key: str,
        where: str,
        value: Any,
    ) -> str:
        what = "block" if _is_block(value) else "argument"
        message = f"unknown {what} {where}"
        close = difflib.get_close_matches(key, list(struct["a"]) + list(struct["b"]), n=1, cutoff=0.75)
        if close:
            return f"{message} (did you mean {close[0]}?)"
        elsewhere = self.find_paths(schema, block, key) if schema else []
        if elsewhere:
            return f"{message} ({key} belongs under {' or '.join(elsewhere)})"
        return message

    def find_paths(self, schema: ProviderSchema, block: Block, key: str) -> list[str]:
        """Where in the block's schema ``key`` is an argument or block (for misplaced blocks)."""
        types = schema.resources if block.kind == "resource" else schema.data_sources
        found: list[str] = []
        seen: set[str] = set()

        def walk(sid: str, path: str) -> None:
            if sid in seen or len(found) >= 3:
                return
            seen.add(sid)
            struct = schema.structs[sid]
            if key in struct["a"] or key in struct["b"]:
                found.append(path or block.type)
            for name, spec in struct["b"].items():
                walk(spec[0], f"{path}.{name}" if path else name)

        walk(types[block.type], "")
        return found


def check(root: Path, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Problems of the module at ``root`` and of every local module below it."""
    checker = Checker(schema_dir=schema_dir)
    display_root = Path.cwd() if root.resolve().is_relative_to(Path.cwd()) else root.parent
    directories = module_dirs(root)
    if not directories or directories[0] != root:
        return [f"{root}: no .tf files"]
    root_dir, *child_dirs = directories
    root_module = load_module(root_dir, display_root)
    checker.pinned = set(root_module.required_providers)
    checker.check_module(root_module)
    for directory in child_dirs:
        checker.check_module(load_module(directory, display_root))
    return checker.problems


def iter_packages(names: list[str] | None = None) -> Iterator[ProviderPackage]:
    for name in names or list(PACKAGES):
        yield PACKAGES[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", type=Path, help="Terraform module directory (e.g. terraform/)")
    parser.add_argument(
        "--schema-dir",
        type=Path,
        default=SCHEMA_DIR,
        help="directory with wheels/ and the cached compact schemas",
    )
    parser.add_argument("--build-schemas", action="store_true", help="only extract and cache the schemas")
    args = parser.parse_args(argv)
    try:
        if args.build_schemas:
            for package in iter_packages():
                schema = load_schema(package, args.schema_dir, refresh=True)
                print(
                    f"{package.source} {schema.version}: {len(schema.resources)} resources, "
                    f"{len(schema.data_sources)} data sources"
                )
            if not args.module:
                return 0
        if not args.module:
            parser.error("a module directory is required")
        problems = check(
            args.module.resolve() if not args.module.is_absolute() else args.module, args.schema_dir
        )
    except SchemaUnavailable as e:
        print(f"terraform_gate: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    if problems:
        print(f"terraform_gate: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"terraform_gate: {args.module} matches the provider schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
