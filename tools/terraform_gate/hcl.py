"""Terraform modules as parsed HCL: literal values, resource and data blocks, local modules."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------
# HCL values
# ---------------------------------------------------------------------------

CONDITIONAL = re.compile(r'^\$\{[^"?]+\?\s*"([^"$]*)"\s*:\s*"([^"$]*)"\s*\}$')


def is_block(value: Any) -> bool:
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


def literal_choices(value: Any) -> list[str]:
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


def type_problem(wanted: str, value: Any) -> str | None:
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


def unquote(label: str) -> str:
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
                            module.blocks.append(Block(shown, kind, unquote(rtype), unquote(name), body))
        for terraform in doc.get("terraform", []):
            for required in terraform.get("required_providers", []):
                for local, spec in required.items():
                    if isinstance(spec, dict):
                        module.required_providers[local] = (
                            unquote(str(spec.get("source", ""))),
                            unquote(str(spec.get("version", ""))),
                            shown,
                        )
    return module


def module_dirs(root: Path) -> list[Path]:
    """``root`` and every directory below it holding .tf files (local modules)."""
    skip = {".terraform", ".build", "node_modules"}
    return sorted({p.parent for p in root.rglob("*.tf") if not skip & set(p.relative_to(root).parts)})
