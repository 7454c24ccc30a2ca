"""``python -m tools.terraform_gate MODULE_DIR``: one line per problem, exit 1 if any."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from tools.terraform_gate.checker import check
from tools.terraform_gate.providers import PACKAGES, SCHEMA_DIR, ProviderPackage
from tools.terraform_gate.schemas import SchemaUnavailable, load_schema


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
