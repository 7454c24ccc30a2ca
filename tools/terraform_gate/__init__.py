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
