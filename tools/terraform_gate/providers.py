"""The providers the gate knows: their PyPI schema wheels, Terraform's meta-arguments, and
API enums the provider schemas do not document (each with its source)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
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
