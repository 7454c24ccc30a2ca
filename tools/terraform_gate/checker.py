"""The checks: every resource and data block against its provider's schema."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.terraform_gate.hcl import (
    Block,
    Module,
    is_block,
    literal_choices,
    load_module,
    module_dirs,
    type_problem,
    unquote,
)
from tools.terraform_gate.providers import (
    API_ENUMS,
    BUILTIN_RESOURCES,
    DYNAMIC_KEYS,
    LIFECYCLE_KEYS,
    META_ARGUMENTS,
    META_BLOCKS,
    PACKAGES,
    SCHEMA_DIR,
)
from tools.terraform_gate.schemas import ProviderSchema, load_schema

# ---------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------


# Schemas read once per process, by (provider, schema directory).
_LOADED: dict[tuple[str, Path], ProviderSchema] = {}


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
                f"no schema for provider {provider!r}: add its package to PACKAGES "
                "(tools/terraform_gate/providers.py)",
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
                        name = unquote(label)
                        present.add(name)
                        self.check_dynamic(block, blocks, schema, name, dyn_body, path)
                continue
            present.add(key)
            if key in attrs:
                if is_block(value):
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
        if is_block(value):
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
        if not is_block(contents):
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
        problem = type_problem(wanted, value)
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
            [c for v in value for c in literal_choices(v)]
            if isinstance(value, list)
            else literal_choices(value)
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
        what = "block" if is_block(value) else "argument"
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
