"""Mutation tests of tools/terraform_gate/: each injects one error a real `terraform apply`
(or `terraform validate`) would reject into a copy of terraform/ and expects the gate to name it.

The provider schemas come from the wheels `make tools` downloads (requirements/provider-schemas.txt);
without them these tests fail rather than skip, so a missing gate cannot pass silently.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.terraform_gate import checker as gate
from tools.terraform_gate.providers import PACKAGES

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "terraform"

# (id, file, text to replace, replacement, substrings the gate's message must contain)
MUTATIONS = [
    (
        "unknown-argument",
        "dataflow.tf",
        "enable_streaming_engine = true",
        "enable_streaming_engin = true",
        [
            "google_dataflow_flex_template_job.streaming",
            "unknown argument enable_streaming_engin",
            "did you mean enable_streaming_engine",
        ],
    ),
    (
        "nested-unknown-argument",
        "functions.tf",
        "runtime           = var.python_runtime",
        "runtme            = var.python_runtime",
        [
            "google_cloudfunctions2_function.http",
            "unknown argument build_config.runtme",
            "did you mean runtime",
        ],
    ),
    (
        "deeply-nested-unknown-argument",
        "training.tf",
        "read_only = true",
        "readonly = true",
        [
            "google_cloud_run_v2_job.training",
            "unknown argument template.template.volumes.gcs.readonly",
            "did you mean read_only",
        ],
    ),
    (
        "enum-from-provider-validation",
        "dataflow.tf",
        'on_delete = "drain"',
        'on_delete = "drian"',
        ["google_dataflow_flex_template_job.streaming", 'on_delete = "drian" is not one of cancel, drain'],
    ),
    (
        "string-for-number",
        "pubsub.tf",
        "ack_deadline_seconds       = 60",
        'ack_deadline_seconds       = "sixty"',
        [
            "google_pubsub_subscription.events_pipeline",
            'ack_deadline_seconds expects a number, got the string "sixty"',
        ],
    ),
    (
        "api-enum-not-in-docs",
        "dataflow.tf",
        "enable_streaming_engine = true",
        'enable_streaming_engine = true\n  autoscaling_algorithm   = "THROUGHPUT_BASED"',
        [
            "google_dataflow_flex_template_job.streaming",
            'autoscaling_algorithm = "THROUGHPUT_BASED" is not one of',
            "AUTOSCALING_ALGORITHM_BASIC",
            "terraform-provider-google#17570",
        ],
    ),
    (
        "misplaced-nested-block",
        "training.tf",
        "  retry_config {\n    retry_count = 1\n  }\n\n  http_target {\n",
        "  http_target {\n    retry_config {\n      retry_count = 1\n    }\n",
        [
            "google_cloud_scheduler_job.training",
            "unknown block http_target.retry_config",
            "retry_config belongs under google_cloud_scheduler_job",
        ],
    ),
    (
        "missing-required-argument",
        "pubsub.tf",
        "  name                       = var.dead_letter_subscription\n"
        "  topic                      = google_pubsub_topic.dead_letter.id\n",
        "  name                       = var.dead_letter_subscription\n",
        ["google_pubsub_subscription.dead_letter", "missing required argument topic"],
    ),
    (
        "missing-required-nested-block",
        "storage.tf",
        "      action {\n        type          = lifecycle_rule.value.action\n"
        "        storage_class = try(lifecycle_rule.value.storage_class, null)\n      }\n",
        "",
        ["google_storage_bucket.bucket", "missing required block lifecycle_rule.action"],
    ),
    (
        "enum-from-schema-docs",
        "firestore.tf",
        'type                              = "FIRESTORE_NATIVE"',
        'type                              = "FIRESTORE_NATIV"',
        ["google_firestore_database.main", 'type = "FIRESTORE_NATIV" is not one of', "DATASTORE_MODE"],
    ),
    (
        "enum-in-conditional",
        "firestore.tf",
        '"DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"',
        '"DELETE_PROTECTION_ENABLED" : "DISABLED"',
        ["google_firestore_database.main", 'delete_protection_state = "DISABLED" is not one of'],
    ),
    (
        "string-for-bool",
        "network.tf",
        "private_ip_google_access = true",
        'private_ip_google_access = "yes"',
        ["google_compute_subnetwork.dataflow", "private_ip_google_access expects a bool"],
    ),
    (
        "block-written-as-argument",
        "pubsub.tf",
        '  expiration_policy {\n    ttl = ""',
        '  expiration_policy = {\n    ttl = ""',
        ["google_pubsub_subscription", "expiration_policy is a block, not an argument"],
    ),
    (
        "beta-only-resource-on-ga-provider",
        "dataflow.tf",
        "  provider = google-beta\n",
        "",
        [
            "google_dataflow_flex_template_job.streaming",
            "not a resource type of hashicorp/google 6.50.0",
            "exists in google-beta",
        ],
    ),
    (
        "dynamic-block-unknown",
        "functions.tf",
        'dynamic "source" {',
        'dynamic "sources" {',
        ["data.archive_file.function", 'dynamic "sources"', "sources is not a block of archive_file"],
    ),
    (
        "lifecycle-meta-block",
        "functions.tf",
        "    precondition {",
        "    pre_condition {",
        ["google_cloudfunctions2_function.http", "lifecycle: unknown argument pre_condition"],
    ),
    (
        "provider-not-pinned",
        "versions.tf",
        '    time = {\n      source  = "hashicorp/time"\n      version = "= 0.13.1"\n    }\n',
        "",
        [
            "time_sleep.build_iam_propagation",
            "provider time is not pinned in the root module's required_providers",
        ],
    ),
    (
        "provider-pin-drift",
        "versions.tf",
        'version = "= 6.50.0"',
        'version = "= 6.49.0"',
        ["versions.tf:terraform.required_providers.google", "6.49.0", "checks hashicorp/google = 6.50.0"],
    ),
]


def _run(tmp_path: Path, file: str, old: str, new: str) -> list[str]:
    copy = tmp_path / "terraform"
    shutil.copytree(TF_DIR, copy, ignore=shutil.ignore_patterns(".terraform", ".build", "*.tfstate*"))
    target = copy / file
    text = target.read_text(encoding="utf-8")
    assert old in text, f"mutation anchor not found in {file}: {old!r}"
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    return gate.check(copy)


def test_the_module_matches_the_provider_schemas() -> None:
    assert gate.check(TF_DIR) == []


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_gate_names_the_injected_error(tmp_path: Path, mutation: tuple) -> None:
    _, file, old, new, expected = mutation
    problems = _run(tmp_path, file, old, new)
    assert problems, "the gate accepted the mutated module"
    matching = [p for p in problems if all(e in p for e in expected)]
    assert matching, f"no problem mentions {expected}:\n" + "\n".join(problems)
    assert all(p.startswith("terraform/") for p in problems), problems


def test_the_schema_is_the_pinned_provider_version() -> None:
    for name, package in PACKAGES.items():
        schema = gate.Checker().schema(name)
        assert (schema.source, schema.version) == (package.source, package.version)
    google = gate.Checker().schema("google")
    subscription = google.structs[google.resources["google_pubsub_subscription"]]
    # jsii's camelCase property names map back to the provider's snake_case names
    assert {"ack_deadline_seconds", "message_retention_duration", "topic"} <= set(subscription["a"])
    assert subscription["a"]["name"][:2] == ["string", True]
    assert {"dead_letter_policy", "retry_policy", "expiration_policy"} <= set(subscription["b"])


def test_the_command_line_prints_one_line_per_problem_and_fails(tmp_path: Path) -> None:
    copy = tmp_path / "terraform"
    shutil.copytree(TF_DIR, copy, ignore=shutil.ignore_patterns(".terraform", ".build"))
    dataflow = copy / "dataflow.tf"
    dataflow.write_text(dataflow.read_text(encoding="utf-8").replace('"drain"', '"drian"'), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "tools.terraform_gate", str(copy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(
        "terraform/dataflow.tf:google_dataflow_flex_template_job.streaming: "
        'on_delete = "drian" is not one of cancel, drain ('
    )
    clean = subprocess.run(
        [sys.executable, "-m", "tools.terraform_gate", str(TF_DIR)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_local_modules_and_meta_arguments(tmp_path: Path) -> None:
    root = tmp_path / "terraform"
    (root / "modules" / "topic").mkdir(parents=True)
    (root / "versions.tf").write_text(
        'terraform {\n  required_providers {\n    google = {\n      source  = "hashicorp/google"\n'
        '      version = "= 6.50.0"\n    }\n  }\n}\n',
        encoding="utf-8",
    )
    (root / "main.tf").write_text(
        'resource "google_pubsub_topic" "t" {\n  for_each   = toset(["a"])\n  name       = each.key\n'
        "  depends_on = []\n  lifecycle {\n    prevent_destroy = true\n  }\n  timeouts {\n"
        '    create = "5m"\n  }\n}\n\nresource "terraform_data" "x" {\n  input = 1\n'
        '  provisioner "local-exec" {\n    command = "true"\n  }\n}\n',
        encoding="utf-8",
    )
    assert gate.check(root) == []
    (root / "modules" / "topic" / "main.tf").write_text(
        'resource "google_pubsub_topic" "t" {\n  nme = "x"\n}\n', encoding="utf-8"
    )
    assert gate.check(root) == [
        "terraform/modules/topic/main.tf:google_pubsub_topic.t: unknown argument nme (did you mean name?)",
        "terraform/modules/topic/main.tf:google_pubsub_topic.t: missing required argument name",
    ]
