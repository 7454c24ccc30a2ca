"""Static checks of terraform/ (no provider download): wiring, contracts, security, formatting.

Every check is a small function returning the problems it finds; the tests run them on the
real module and, to prove they can fail, on deliberately broken snippets.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import hcl2
import pytest
from hcl2 import SerializationOptions

from schemas import names

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "terraform"
HCL_OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)

RESOURCE_REF = re.compile(
    r"(?<![\w./-])(data\.)?((?:google|terraform|archive|time)_[a-z0-9_]+)\.([A-Za-z_][\w-]*)")
# A reference to one instance: google_x.name or google_x.name["key"].
INSTANCE_REF = re.compile(
    r'(?<![\w./-])((?:google|terraform|archive|time)_[a-z0-9_]+\.[A-Za-z_][\w-]*(?:\["[^"]+"\])?)')
VAR_REF = re.compile(r"(?<![\w.])var\.([A-Za-z_][\w-]*)")
LOCAL_REF = re.compile(r"(?<![\w.])local\.([A-Za-z_][\w-]*)")
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")
EXACT_VERSION = re.compile(r"^=?\s*\d+\.\d+\.\d+$")


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


@dataclass
class Module:
    """The blocks of a Terraform module, keyed the way expressions refer to them."""

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # "type.name"
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # "type.name"
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    terraform: list[dict[str, Any]] = field(default_factory=list)
    providers: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        """Resources of one type, by name."""
        return {k.split(".", 1)[1]: v for k, v in self.resources.items() if k.split(".", 1)[0] == rtype}


def parse_module(files: dict[str, str]) -> Module:
    """Parse HCL texts (file name -> text) into one module; duplicate declarations are errors."""
    module = Module()
    for fname, text in sorted(files.items()):
        doc = hcl2.loads(text, serialization_options=HCL_OPTIONS)
        for block in doc.get("resource", []):
            _add_named(module.resources, block, fname)
        for block in doc.get("data", []):
            _add_named(module.data, block, fname)
        for block in doc.get("variable", []):
            _add_flat(module.variables, block, fname)
        for block in doc.get("output", []):
            _add_flat(module.outputs, block, fname)
        for block in doc.get("locals", []):
            _add_flat(module.locals, block, fname)
        module.terraform.extend(doc.get("terraform", []))
        module.providers.extend(doc.get("provider", []))
    return module


def _add_named(target: dict[str, Any], block: dict[str, Any], fname: str) -> None:
    for rtype, by_name in block.items():
        for name, body in by_name.items():
            key = f"{rtype}.{name}"
            assert key not in target, f"{key} declared twice ({fname})"
            target[key] = body


def _add_flat(target: dict[str, Any], block: dict[str, Any], fname: str) -> None:
    for name, body in block.items():
        assert name not in target, f"{name} declared twice ({fname})"
        target[name] = body


def load_dir(path: Path) -> Module:
    """Parse every .tf file of a directory."""
    return parse_module({p.name: p.read_text(encoding="utf-8") for p in sorted(path.glob("*.tf"))})


def iter_strings(node: Any) -> Iterator[str]:
    """Every string (expressions are strings like "${...}") in a parsed block, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from iter_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from iter_strings(v)


def all_blocks(module: Module) -> Iterator[tuple[str, Any]]:
    """(label, body) of everything in the module that can hold expressions."""
    for key, body in module.resources.items():
        yield key, body
    for key, body in module.data.items():
        yield f"data.{key}", body
    for key, body in module.outputs.items():
        yield f"output.{key}", body
    for key, body in module.variables.items():
        yield f"var.{key}", body
    yield "locals", module.locals
    yield "provider", module.providers


def ref_target(expr: str) -> str:
    """``"${google_x.name.attr}"`` -> ``"google_x.name"``; raise if not a single reference."""
    match = RESOURCE_REF.search(expr)
    assert match and not match.group(1), f"not a resource reference: {expr!r}"
    return f"{match.group(2)}.{match.group(3)}"


def ref_instance(expr: str) -> str:
    """``"${google_x.name["k"].attr}"`` -> ``'google_x.name["k"]'`` (no key when not indexed)."""
    match = INSTANCE_REF.search(expr)
    assert match, f"not a resource reference: {expr!r}"
    return match.group(1)


def first(block_list: Any) -> dict[str, Any]:
    """A nested block parses as a list of dicts; the first one."""
    assert isinstance(block_list, list) and block_list, f"expected a nested block, got {block_list!r}"
    return block_list[0]


# ---------------------------------------------------------------------------
# Checks: each returns a list of problems (empty = fine)
# ---------------------------------------------------------------------------


def undeclared_references(module: Module) -> list[str]:
    """References to resources, data sources, variables or locals that are not declared."""
    problems = []
    for label, body in all_blocks(module):
        for text in iter_strings(body):
            for m in RESOURCE_REF.finditer(text):
                key = f"{m.group(2)}.{m.group(3)}"
                declared = module.data if m.group(1) else module.resources
                if key not in declared:
                    problems.append(f"{label}: {m.group(0)} is not declared")
            problems += [f"{label}: var.{v} is not declared" for v in VAR_REF.findall(text)
                         if v not in module.variables]
            problems += [f"{label}: local.{v} is not declared" for v in LOCAL_REF.findall(text)
                         if v not in module.locals]
    return problems


def unused_variables(module: Module) -> list[str]:
    """Declared variables nothing refers to (drift between variables.tf and the resources)."""
    used = {v for label, body in all_blocks(module) if not label.startswith("var.")
            for text in iter_strings(body) for v in VAR_REF.findall(text)}
    return [f"variable {v} is never used" for v in module.variables if v not in used]


def undescribed_variables(module: Module) -> list[str]:
    """Variables without a type or a description."""
    problems = []
    for name, body in module.variables.items():
        if not body.get("type"):
            problems.append(f"variable {name} has no type")
        if not str(body.get("description", "")).strip():
            problems.append(f"variable {name} has no description")
    return problems


def undescribed_outputs(module: Module) -> list[str]:
    """Outputs without a description."""
    return [f"output {name} has no description" for name, body in module.outputs.items()
            if not str(body.get("description", "")).strip()]


def unpinned_providers(module: Module) -> list[str]:
    """Required providers whose version is not one exact release."""
    problems = []
    required = [p for t in module.terraform for block in t.get("required_providers", [])
                for p in block.items()]
    if not required:
        problems.append("no required_providers block")
    for name, spec in required:
        version = spec.get("version", "") if isinstance(spec, dict) else ""
        if not EXACT_VERSION.match(str(version)):
            problems.append(f"provider {name} is not pinned to an exact version: {version!r}")
    return problems


def unguarded_public_members(module: Module) -> list[str]:
    """allUsers/allAuthenticatedUsers anywhere except in resources created only when
    var.allow_unauthenticated is true (their count/for_each depends on it)."""
    problems = []
    for label, body in all_blocks(module):
        if label.startswith("var."):  # a variable's description may name allUsers
            continue
        guard = str(body.get("count", "")) + str(body.get("for_each", "")) if isinstance(body, dict) else ""
        guarded = label in module.resources and "var.allow_unauthenticated" in guard
        for text in iter_strings(body):
            if any(p in text for p in PUBLIC_MEMBERS) and not guarded:
                problems.append(f"{label}: public member {text!r} not guarded by var.allow_unauthenticated")
    return problems


def dataflow_subscription_problems(module: Module, subscription: str) -> list[str]:
    """A subscription the Dataflow pipeline reads must keep messages and carry no dead-letter or
    retry policy: Pub/Sub does not support them with Dataflow (Dataflow acks on receipt, so they
    never trigger); the pipeline's own dead-letter output handles bad events."""
    body = module.resources.get(subscription)
    if body is None:
        return [f"{subscription} is not declared"]
    problems = [f"{subscription} has a {policy} (not supported with Dataflow)"
                for policy in ("dead_letter_policy", "retry_policy") if body.get(policy)]
    if not body.get("message_retention_duration"):
        problems.append(f"{subscription} has no message_retention_duration")
    return problems


def shared_service_accounts(module: Module, users: dict[str, str]) -> list[str]:
    """``users`` maps a component to the expression naming its service account; each must be a
    distinct google_service_account."""
    problems, seen = [], {}
    for component, expr in users.items():
        if not expr:
            problems.append(f"{component} sets no service account")
            continue
        target = ref_instance(expr)
        if not target.startswith("google_service_account."):
            problems.append(f"{component} runs as {expr}, not a google_service_account")
        elif target in seen:
            problems.append(f"{component} shares {target} with {seen[target]}")
        seen.setdefault(target, component)
    return problems


def _per_instance(module: Module, body: dict[str, Any], expr: str) -> dict[str, str]:
    """``expr`` per for_each key when it is ``each.value.X`` over ``local.Y`` (else one entry)."""
    match = re.fullmatch(r"\$\{each\.value\.(\w+)\}", expr or "")
    source = re.fullmatch(r"\$\{local\.(\w+)\}", str(body.get("for_each", "")))
    if match and source:
        items = module.locals[source.group(1)]
        return {key: str(item.get(match.group(1), "")) for key, item in items.items()}
    return {"": expr}


def component_service_accounts(module: Module) -> dict[str, str]:
    """Component -> service account expression, for functions, the Dataflow job and training."""
    users = {}
    for n, b in module.of_type("google_cloudfunctions2_function").items():
        expr = first(b.get("service_config")).get("service_account_email", "")
        users |= {f"function {key or n}": e for key, e in _per_instance(module, b, expr).items()}
    users |= {f"dataflow {n}": b.get("service_account_email", "")
              for n, b in module.of_type("google_dataflow_flex_template_job").items()}
    users |= {f"cloud run job {n}": first(first(b["template"])["template"]).get("service_account", "")
              for n, b in module.of_type("google_cloud_run_v2_job").items()}
    users |= {f"scheduler {n}": first(first(b["http_target"])["oauth_token"]).get("service_account_email", "")
              for n, b in module.of_type("google_cloud_scheduler_job").items()}
    return users


# ---------------------------------------------------------------------------
# The real module
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module() -> Module:
    return load_dir(TF_DIR)


def test_every_tf_file_parses_and_declares_something(module: Module) -> None:
    files = sorted(p.name for p in TF_DIR.glob("*.tf"))
    for concern in ("versions.tf", "variables.tf", "outputs.tf", "apis.tf", "pubsub.tf", "firestore.tf",
                    "storage.tf", "iam.tf", "functions.tf", "dataflow.tf", "training.tf", "monitoring.tf"):
        assert concern in files
    assert len(module.resources) > 40
    assert "network.tf" in files


def test_every_reference_is_declared(module: Module) -> None:
    assert undeclared_references(module) == []


def test_every_variable_is_typed_described_and_used(module: Module) -> None:
    assert undescribed_variables(module) == []
    assert unused_variables(module) == []


def test_every_output_is_described(module: Module) -> None:
    assert undescribed_outputs(module) == []
    for wanted in ("recommend_url", "ingest_url", "events_topic", "events_subscription", "dead_letter_topic",
                   "catalog_topic", "buckets", "service_accounts"):
        assert wanted in module.outputs


def test_providers_pinned_exactly(module: Module) -> None:
    assert unpinned_providers(module) == []


def test_constrained_variables_are_validated(module: Module) -> None:
    for name in ("project", "region", "name_prefix", "default_alpha", "recommend_memory",
                 "recommend_max_instances", "recommend_concurrency", "dataflow_max_workers",
                 "dataflow_machine_type", "training_schedule"):
        assert module.variables[name].get("validation"), f"variable {name} has no validation"
    alpha = module.variables["default_alpha"]
    assert 0 <= alpha["default"] <= 1
    condition = first(alpha["validation"])["condition"]
    assert ">= 0" in condition and "<= 1" in condition
    assert module.variables["allow_unauthenticated"]["default"] is False


def test_resource_names_default_to_schemas_names(module: Module) -> None:
    expected = {"events_topic": names.EVENTS_TOPIC, "events_subscription": names.EVENTS_SUBSCRIPTION,
                "dead_letter_topic": names.DEAD_LETTER_TOPIC,
                "dead_letter_subscription": names.DEAD_LETTER_SUBSCRIPTION,
                "catalog_topic": names.CATALOG_TOPIC, "catalog_subscription": names.CATALOG_SUBSCRIPTION,
                "served_topic": names.SERVED_TOPIC, "served_subscription": names.SERVED_SUBSCRIPTION}
    for var, value in expected.items():
        assert module.variables[var]["default"] == value, var


def test_topics_carry_no_pubsub_schema(module: Module) -> None:
    """One event contract locally and on GCP (docs/events.md): no topic is schema-bound, the
    pipeline validates against schemas/*.avsc (tests/unit/test_event_contract.py compares the
    topics with scripts/local_stack.py)."""
    for topic in ("events", "catalog", "dead_letter", "served"):
        assert "schema_settings" not in module.resources[f"google_pubsub_topic.{topic}"], topic
    assert module.of_type("google_pubsub_schema") == {}
    for avsc in ("product_event.avsc", "catalog_item.avsc", "served_record.avsc"):
        fastavro.parse_schema(json.loads((ROOT / "schemas" / avsc).read_text(encoding="utf-8")))


def test_pipeline_subscriptions_leave_dead_letters_to_the_pipeline(module: Module) -> None:
    for sub in ("google_pubsub_subscription.events_pipeline", "google_pubsub_subscription.catalog_pipeline",
                "google_pubsub_subscription.served_pipeline"):
        assert dataflow_subscription_problems(module, sub) == []
    events_sub = module.resources["google_pubsub_subscription.events_pipeline"]
    assert events_sub["name"] == "${var.events_subscription}"
    assert module.resources["google_pubsub_topic.dead_letter"]["name"] == "${var.dead_letter_topic}"
    # The pipeline publishes its dead-letter output itself, as its own service account.
    assert ref_target(module.locals["pipeline_parameters"].split("dead_letter_topic")[1]) == \
        "google_pubsub_topic.dead_letter"
    publisher = module.resources["google_pubsub_topic_iam_member.pipeline_dead_letter_publisher"]
    assert publisher["role"] == "roles/pubsub.publisher"
    assert ref_target(publisher["topic"]) == "google_pubsub_topic.dead_letter"
    assert ref_instance(publisher["member"]) == 'google_service_account.component["pipeline"]'
    # Nothing grants the Pub/Sub service agent anything (no policy of Pub/Sub's needs it).
    assert "gcp-sa-pubsub" not in json.dumps(module.resources) + json.dumps(module.locals)
    # The inspection subscription exists on the DLQ topic.
    dlq_sub = module.resources["google_pubsub_subscription.dead_letter"]
    assert ref_target(dlq_sub["topic"]) == "google_pubsub_topic.dead_letter"


def test_dataflow_workers_are_private_on_a_subnet_with_google_access(module: Module) -> None:
    job = module.resources["google_dataflow_flex_template_job.streaming"]
    assert job["ip_configuration"] == "WORKER_IP_PRIVATE"
    assert "autoscaling_algorithm" not in job  # not THROUGHPUT_BASED: the API field's enum lacks it
    assert job["subnetwork"] == "${local.dataflow_subnet}"
    assert "google_compute_subnetwork.dataflow" in module.locals["dataflow_subnet"]
    assert "var.dataflow_subnetwork" in module.locals["dataflow_subnet"]
    subnet = module.resources["google_compute_subnetwork.dataflow"]
    assert subnet["private_ip_google_access"] is True
    firewall = module.resources["google_compute_firewall.dataflow_workers"]
    assert first(firewall["allow"]) == {"protocol": "tcp", "ports": ["12345-12346"]}
    assert firewall["source_tags"] == firewall["target_tags"] == ["${local.dataflow_workers_tag}"]
    assert module.locals["dataflow_workers_tag"] == "dataflow"


def test_pipeline_parameters_point_at_the_pipeline_subscriptions(module: Module) -> None:
    params = module.locals["pipeline_parameters"]
    text = json.dumps(params)
    for target in ("google_pubsub_subscription.events_pipeline",
                   "google_pubsub_subscription.catalog_pipeline",
                   "google_pubsub_subscription.served_pipeline", "google_pubsub_topic.dead_letter"):
        assert target in text


def test_recommend_function_publishes_served_lists_and_the_pipeline_reads_them(module: Module) -> None:
    """Experiments: the function publishes to the served topic (its env names it, its account may),
    the pipeline subscribes to it as its own account."""
    assert module.resources["google_pubsub_topic.served"]["name"] == "${var.served_topic}"
    sub = module.resources["google_pubsub_subscription.served_pipeline"]
    assert ref_target(sub["topic"]) == "google_pubsub_topic.served"
    env = json.dumps(module.locals["http_functions"]["recommend"]["environment"])
    assert "SERVED_TOPIC" in env and "google_pubsub_topic.served" in env
    publisher = module.resources["google_pubsub_topic_iam_member.recommend_served_publisher"]
    assert publisher["role"] == "roles/pubsub.publisher"
    assert ref_target(publisher["topic"]) == "google_pubsub_topic.served"
    assert ref_instance(publisher["member"]) == 'google_service_account.component["recommend"]'
    grants = module.resources["google_pubsub_subscription_iam_member.pipeline"]["for_each"]
    assert "served_pipeline.name" in json.dumps(grants) and "roles/pubsub.subscriber" in json.dumps(grants)


def test_each_component_has_its_own_service_account(module: Module) -> None:
    users = component_service_accounts(module)
    assert {"function recommend", "function ingest", "dataflow streaming", "cloud run job training",
            "scheduler training"} <= set(users)
    assert shared_service_accounts(module, users) == []


def test_function_builds_can_read_the_copied_sources_and_wait_for_iam(module: Module) -> None:
    # Cloud Functions copies the source into gcf-v2-sources-<number>-<region>, created on the first
    # deploy, so only a project-level role can cover it: Cloud Run's documented roles/run.builder.
    build = module.resources["google_project_iam_member.build"]
    assert "roles/run.builder" in build["for_each"]
    assert ref_instance(build["member"]) == 'google_service_account.component["build"]'
    sleep = module.resources["time_sleep.build_iam_propagation"]
    assert "${google_project_iam_member.build}" in sleep["depends_on"]
    for builder in ("google_cloudfunctions2_function", "terraform_data"):
        for name, body in module.of_type(builder).items():
            assert "${time_sleep.build_iam_propagation}" in body["depends_on"], f"{builder}.{name}"


def test_firestore_users_wait_for_the_database(module: Module) -> None:
    for key in ("google_cloudfunctions2_function.http", "google_dataflow_flex_template_job.streaming",
                "google_cloud_run_v2_job.training"):
        assert "${google_firestore_database.main}" in module.resources[key]["depends_on"], key


def test_nothing_public_unless_allowed(module: Module) -> None:
    assert unguarded_public_members(module) == []
    public = module.resources["google_cloud_run_v2_service_iam_member.public_invoker"]
    assert public["member"] == "allUsers"
    assert "var.allow_unauthenticated" in public["for_each"]


def test_no_project_wide_storage_or_pubsub_roles(module: Module) -> None:
    for key, body in module.resources.items():
        if key.startswith("google_project_iam_member."):
            roles = json.dumps(body)
            assert "roles/storage." not in roles and "roles/pubsub." not in roles, key
            assert "roles/owner" not in roles and "roles/editor" not in roles, key


def test_buckets_are_private_and_uniform(module: Module) -> None:
    buckets = module.of_type("google_storage_bucket")
    assert set(buckets) == {"bucket", "access_logs"}
    assert set(module.locals["buckets"]) == {"models", "archive", "staging", "function_source"}
    for name, body in buckets.items():
        assert body["uniform_bucket_level_access"] is True, name
        assert body["public_access_prevention"] == "enforced", name
        assert first(body["versioning"])["enabled"] is True, name
    assert buckets["bucket"]["for_each"] == "${local.buckets}"
    assert first(buckets["bucket"]["logging"])["log_bucket"] == "${google_storage_bucket.access_logs.name}"
    rules = module.locals["buckets"]
    assert any(r.get("age") and r.get("prefixes") for r in rules["staging"]["lifecycle_rules"])
    assert all(any(r.get("noncurrent_days") for r in b["lifecycle_rules"]) for b in rules.values())


# What each deploy archive holds: zip prefix -> repository folder (a folder that does not exist
# yet contributes nothing).
ARCHIVE_TREES = {
    "recommend": {"": "functions/recommend", "schemas/": "schemas", "scoring/": "scoring",
                  "httpfn/": "functions/httpfn"},
    "ingest": {"": "functions/ingest", "schemas/": "schemas", "httpfn/": "functions/httpfn"},
}


def test_function_archives_include_the_function_folder_and_shared_packages(module: Module) -> None:
    assert module.locals["function_trees"] == ARCHIVE_TREES
    archive = module.data["archive_file.function"]
    assert archive["for_each"] == "${local.function_trees}"
    (dynamic,) = archive["dynamic"]
    source = dynamic["source"]
    assert source["for_each"] == "${local.function_files[each.key]}"
    assert first(source["content"]) == {"content": "${file(source.value)}", "filename": "${source.key}"}
    objects = module.resources["google_storage_bucket_object.function_source"]
    assert objects["for_each"] == "${data.archive_file.function}"
    assert "each.value.output_md5" in objects["name"]
    function = module.resources["google_cloudfunctions2_function.http"]
    assert function["for_each"] == "${local.http_functions}"
    assert set(module.locals["http_functions"]) == set(ARCHIVE_TREES)
    storage = first(first(first(function["build_config"])["source"])["storage_source"])
    assert ref_instance(storage["object"]) == "google_storage_bucket_object.function_source"
    assert "[each.key]" in storage["object"]


@pytest.mark.parametrize("name", ["recommend", "ingest"])
def test_function_entry_points_exist(module: Module, name: str) -> None:
    function = module.resources["google_cloudfunctions2_function.http"]
    assert first(function["build_config"])["entry_point"] == "${each.value.entry_point}"
    entry = module.locals["http_functions"][name]["entry_point"]
    main = ROOT / "functions" / name / "main.py"
    tree = ast.parse(main.read_text(encoding="utf-8"))
    assert entry in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert (ROOT / "functions" / name / "requirements.txt").is_file()


@pytest.mark.parametrize("name", ["recommend", "ingest"])
def test_function_requirements_cover_what_the_archive_imports(name: str) -> None:
    assert missing_requirements(ROOT / "functions" / name) == []


def test_missing_requirement_is_found(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import numpy\nfrom helper import x\n", encoding="utf-8")
    (tmp_path / "helper.py").write_text("from google.cloud import firestore\nx = 1\n", encoding="utf-8")
    (tmp_path / "requirements.txt").write_text("numpy==2.0  # arrays\n", encoding="utf-8")
    assert missing_requirements(tmp_path) == ["google-cloud-firestore (import google.cloud.firestore)"]


def test_function_service_config_limits(module: Module) -> None:
    function = module.resources["google_cloudfunctions2_function.http"]
    config = first(function["service_config"])
    for key in ("available_memory", "available_cpu", "max_instance_count", "max_instance_request_concurrency",
                "timeout_seconds", "service_account_email", "environment_variables"):
        assert config.get(key), f"service_config.{key} missing"
    for name, settings in module.locals["http_functions"].items():
        for key in ("memory", "cpu", "max_instances", "concurrency", "timeout_seconds", "service_account"):
            assert settings.get(key), f"{name}: {key} missing"
    # concurrency > 1 needs a whole vCPU: a precondition refuses the combination at plan time.
    (precondition,) = first(function["lifecycle"])["precondition"]
    assert "each.value.cpu" in precondition["condition"]
    assert "each.value.concurrency" in precondition["condition"]
    env = module.locals["http_functions"]["recommend"]["environment"]
    assert "local.serving_env" in env and "DEFAULT_ALPHA" in env and "REFRESH_SECONDS" in env
    ingest_env = module.locals["http_functions"]["ingest"]["environment"]
    assert ref_target(ingest_env["EVENTS_TOPIC"]) == "google_pubsub_topic.events"


def test_function_runtime_supports_the_pinned_numpy(module: Module) -> None:
    runtime = module.variables["python_runtime"]
    assert runtime["default"] >= "python311"
    allowed = re.findall(r"python3\d+", first(runtime["validation"])["condition"])
    assert allowed and all(int(r.removeprefix("python3")) >= 11 for r in allowed), allowed


def test_serving_variable_defaults_agree_with_serving_env(module: Module) -> None:
    serving_env = ROOT / "functions" / "recommend" / "serving.env"
    assert serving_env.is_file(), "functions/recommend/serving.env (the serving settings) is missing"
    values = dict(line.split("=", 1) for line in serving_env.read_text(encoding="utf-8").splitlines()
                  if re.match(r"^[A-Z_][A-Z0-9_]*=", line))
    assert {"WORKERS", "THREADS", "OPENBLAS_NUM_THREADS"} <= set(values)
    # The Terraform variables win over serving.env, so their defaults must say the same.
    assert float(values["DEFAULT_ALPHA"]) == module.variables["default_alpha"]["default"]
    assert float(values["REFRESH_SECONDS"]) == module.variables["refresh_seconds"]["default"]
    # One instance serves WORKERS x THREADS requests at once; Cloud Run should send no more.
    concurrency = int(values["WORKERS"]) * int(values["THREADS"])
    assert module.variables["recommend_concurrency"]["default"] == concurrency


def test_pipeline_flags_exist_in_the_streaming_pipeline(module: Module) -> None:
    streaming = ROOT / "pipelines" / "streaming" / "pipeline.py"
    assert streaming.is_file(), "pipelines/streaming/pipeline.py (the Flex Template's entry point) is missing"
    flags = _argparse_flags(streaming)
    params = _merge_keys(module.locals["pipeline_parameters"])
    assert {"events_subscription", "catalog_subscription", "dead_letter_topic"} <= set(params)
    for param in params:
        assert param.replace("_", "-") in flags, f"pipelines.streaming has no --{param} flag"


def _training_entry_point() -> Path:
    """The file defining `python -m pipelines.training`'s flags (its __main__ runs train.main)."""
    main = (ROOT / "pipelines" / "training" / "__main__.py").read_text(encoding="utf-8")
    assert "from pipelines.training.train import main" in main
    return ROOT / "pipelines" / "training" / "train.py"


def test_training_args_exist_in_the_training_entry_point(module: Module) -> None:
    job = module.resources["google_cloud_run_v2_job.training"]
    container = first(first(first(job["template"])["template"])["containers"])
    assert container["command"] == ["python", "-m", "pipelines.training"]
    entry = _training_entry_point()
    flags = _argparse_flags(entry)
    used = re.findall(r'"--([\w-]+)"', module.locals["training_args"])
    assert {"data", "model-dir", "publish"} <= set(used)
    for flag in used:
        assert flag in flags, f"{entry.relative_to(ROOT)} has no --{flag} flag"


def test_image_hash_covers_everything_the_dockerfile_copies(module: Module) -> None:
    dockerfile = (ROOT / "docker" / "pipeline.Dockerfile").read_text(encoding="utf-8")
    copied = [line.split()[1] for line in dockerfile.splitlines()
              if line.startswith("COPY ") and "--from=" not in line]
    hashed = module.locals["image_source_files"]
    for src in copied:
        top = src.split("/")[0]
        assert src in hashed or re.search(rf"[{{,]{re.escape(top)}[,}}]", hashed), \
            f"{src} is copied into the image but not in the image hash: {hashed}"
    script = (ROOT / "scripts" / "stage_pipeline.sh").read_text(encoding="utf-8")
    for src in copied:
        assert src.split("/")[0] in script, f"stage_pipeline.sh does not put {src} in the build context"


def test_alert_policies_cover_the_required_signals(module: Module) -> None:
    filters = json.dumps(module.of_type("google_monitoring_alert_policy"))
    for metric in ("pubsub.googleapis.com/subscription/num_undelivered_messages",
                   "run.googleapis.com/request_count", "5xx", "run.googleapis.com/request_latencies",
                   "REDUCE_PERCENTILE_99", "dataflow.googleapis.com/job/system_lag",
                   "dataflow.googleapis.com/job/data_watermark_age"):
        assert metric in filters, metric


def _flex_main() -> Any:
    spec = importlib.util.spec_from_file_location("flex_main", ROOT / "docker" / "flex_main.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flex_entry_point_maps_template_parameters_to_pipeline_flags(module: Module) -> None:
    normalize = _flex_main().normalize_flags
    beam = {"temp_location", "staging_location", "sdk_container_image", "runner"}
    argv = ["--runner=DataflowRunner", "--temp_location=gs://b/t", "--staging_location", "gs://b/s",
            "--events_subscription=projects/p/subscriptions/a_b", "--model-dir=gs://m/x_y", "positional_x"]
    assert normalize(argv, beam) == [
        "--runner=DataflowRunner", "--temp_location=gs://b/t", "--staging_location", "gs://b/s",
        "--events-subscription=projects/p/subscriptions/a_b", "--model-dir=gs://m/x_y", "positional_x"]
    flags = _argparse_flags(ROOT / "pipelines" / "streaming" / "pipeline.py")
    params = [f"--{k}=v" for k in _merge_keys(module.locals["pipeline_parameters"])]
    for arg in normalize(params, beam):
        assert arg[2:].split("=")[0] in flags, arg


# ---------------------------------------------------------------------------
# The locals Terraform computes from the repository, evaluated by `terraform console`
# (a module with only locals needs no provider, so this runs offline).
# ---------------------------------------------------------------------------

REPO_LOCALS = ("serving_env_file", "serving_env_lines", "serving_env_from_file", "serving_env",
               "image_source_files", "image_source_hash", "function_trees", "function_files")


def _hcl_value(value: Any) -> str:
    """A value parsed by hcl2 (default options: quotes kept) back to HCL source."""
    if isinstance(value, str):
        if value.startswith("${") and _closing_brace(value, 1) == len(value) - 1:
            return value[2:-1]
        return value
    if isinstance(value, dict):
        return "{\n" + "\n".join(f"{k} = {_hcl_value(v)}" for k, v in value.items()
                                   if not k.startswith("__")) + "\n}"
    if isinstance(value, list):
        return "[" + ", ".join(_hcl_value(v) for v in value) + "]"
    return json.dumps(value)


def _closing_brace(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return -1


def eval_repo_locals(repo_root: Path, expr: str, tmp_path: Path, *tf_args: str) -> Any:
    """Evaluate ``expr`` over the real module's repository-derived locals, with ``repo_root``."""
    found: dict[str, Any] = {}
    for tf in TF_DIR.glob("*.tf"):
        for block in hcl2.loads(tf.read_text(encoding="utf-8")).get("locals", []):
            found |= {k: v for k, v in block.items() if k in REPO_LOCALS}
    assert set(found) == set(REPO_LOCALS), set(REPO_LOCALS) - set(found)
    lines = [f'  repo_root = "{repo_root}"'] + [f"  {k} = {_hcl_value(v)}" for k, v in found.items()]
    workdir = tmp_path / "tf-locals"
    workdir.mkdir()
    (workdir / "main.tf").write_text(
        'variable "serving_settings" {\n  type    = map(string)\n  default = {}\n}\n\n'
        "locals {\n" + "\n".join(lines) + "\n}\n", encoding="utf-8")
    terraform = shutil.which("terraform")
    assert terraform, "terraform is not on PATH"
    result = subprocess.run([terraform, "console", *tf_args], input=f"jsonencode({expr})\n", cwd=workdir,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout.strip().splitlines()[-1]))


def test_serving_settings_come_from_serving_env(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "functions" / "recommend").mkdir(parents=True)
    assert eval_repo_locals(repo, "local.serving_env", tmp_path) == {
        "WORKERS": "2", "THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}
    (repo / "functions" / "recommend" / "serving.env").write_text(
        "# production serving\nWORKERS=3\n  THREADS = 4\nOPENBLAS_NUM_THREADS=\"1\"\n\nEXTRA=a=b\n",
        encoding="utf-8")
    (tmp_path / "tf-locals").rename(tmp_path / "first")
    override = ("-var", 'serving_settings={THREADS="8"}')
    assert eval_repo_locals(repo, "local.serving_env", tmp_path, *override) == {
        "WORKERS": "3", "THREADS": "8", "OPENBLAS_NUM_THREADS": "1", "EXTRA": "a=b"}


def test_archives_and_image_hash_cover_the_right_files(tmp_path: Path) -> None:
    expr = ("{functions = local.function_files, image = local.image_source_files, "
            "hash = local.image_source_hash}")
    files = eval_repo_locals(ROOT, expr, tmp_path)
    for name in ("recommend", "ingest"):
        archive = files["functions"][name]
        assert {"main.py", "requirements.txt", "schemas/__init__.py",
                "schemas/product_event.avsc"} <= set(archive)
        for zipped, disk in archive.items():
            trees = ARCHIVE_TREES[name]
            prefix = next(p for p in sorted(trees, key=len, reverse=True) if zipped.startswith(p))
            assert disk.endswith(f"/{trees[prefix]}/{zipped.removeprefix(prefix)}"), (zipped, disk)
    assert {"openapi.yaml", "serving.env"} <= set(files["functions"]["recommend"])
    assert {"setup.py", "requirements/constraints.txt", "docker/pipeline.Dockerfile", "docker/flex_main.py",
            "pipelines/streaming/pipeline.py", "schemas/product_event.avsc"} <= set(files["image"])
    everything = [f for group in files["functions"].values() for f in group] + files["image"]
    assert not [f for f in everything if "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in files["image"] if f.startswith(("functions/", "tests/", "terraform/"))]
    assert re.fullmatch(r"[0-9a-f]{64}", files["hash"])


def test_archives_take_the_shared_packages_when_they_exist(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for path in ("functions/recommend/main.py", "functions/recommend/recommender/index.py",
                 "functions/ingest/main.py", "functions/httpfn/__init__.py", "functions/httpfn/errors.py",
                 "scoring/__init__.py", "scoring/__pycache__/x.cpython-311.pyc", "schemas/__init__.py"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("", encoding="utf-8")
    files = eval_repo_locals(repo, "local.function_files", tmp_path)
    shared = {"httpfn/__init__.py", "httpfn/errors.py", "schemas/__init__.py"}
    assert set(files["recommend"]) == {"main.py", "recommender/index.py", "scoring/__init__.py"} | shared
    assert set(files["ingest"]) == {"main.py"} | shared
    assert files["recommend"]["httpfn/errors.py"] == f"{repo}/functions/httpfn/errors.py"


def test_terraform_fmt_is_clean() -> None:
    terraform = shutil.which("terraform")
    assert terraform, "terraform is not on PATH (needed for `terraform fmt -check`)"
    result = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(TF_DIR)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


def _fake_gcloud(tmp_path: Path, build_failures: list[str]) -> tuple[dict[str, str], Path, Path]:
    """A gcloud on PATH that records its calls, lists the build context and fails the first
    ``builds submit`` calls with the given stderr messages."""
    calls, context, failures = tmp_path / "calls.txt", tmp_path / "context.txt", tmp_path / "failures"
    failures.mkdir(parents=True)
    for i, message in enumerate(build_failures):
        (failures / f"{i:02d}").write_text(message, encoding="utf-8")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "gcloud"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{calls}"\n'
        'case "$*" in\n'
        '  *"images describe"*) exit 1 ;;\n'
        '  *"builds submit"*)\n'
        f'    next=$(ls "{failures}" | head -n 1)\n'
        f'    if [ -n "$next" ]; then cat "{failures}/$next" >&2; rm "{failures}/$next"; exit 1; fi\n'
        f'    (cd "$3" && find . -type f | sort) > "{context}" ;;\n'
        "esac\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PROJECT="p", REGION="r",
               IMAGE="r-docker.pkg.dev/p/repo/recsys-pipeline:t1", TEMPLATE_PATH="gs://b/templates/s.json",
               BUILD_SERVICE_ACCOUNT="projects/p/serviceAccounts/b@p.iam.gserviceaccount.com",
               STAGING_BUCKET="b", RETRY_SLEEP="0")
    env.pop("FORCE_BUILD", None)
    return env, calls, context


def _stage(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / "stage_pipeline.sh")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_stage_script_builds_a_minimal_context_and_stages_the_template(tmp_path: Path) -> None:
    env, calls, context = _fake_gcloud(tmp_path, [])
    result = _stage(env)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text(encoding="utf-8").splitlines()
    assert lines[1].startswith("builds submit ")
    assert "--substitutions _IMAGE=r-docker.pkg.dev/p/repo/recsys-pipeline:t1" in lines[1]
    assert "--service-account projects/p/serviceAccounts/b@p.iam.gserviceaccount.com" in lines[1]
    assert lines[2].startswith("dataflow flex-template build gs://b/templates/s.json ")
    assert "--image r-docker.pkg.dev/p/repo/recsys-pipeline:t1" in lines[2]
    files = set(context.read_text(encoding="utf-8").split())
    assert {"./setup.py", "./docker/pipeline.Dockerfile", "./schemas/product_event.avsc",
            "./pipelines/streaming/pipeline.py"} <= files
    assert not any(f.startswith(("./.venv", "./tests", "./terraform", "./.")) or "__pycache__" in f
                   for f in files)


def test_stage_script_retries_a_build_refused_for_permissions_only(tmp_path: Path) -> None:
    env, calls, _ = _fake_gcloud(tmp_path / "a", ["ERROR: (gcloud.builds.submit) PERMISSION_DENIED: denied"])
    result = _stage(env)
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("builds submit") for line in calls.read_text().splitlines()) == 2

    env, calls, _ = _fake_gcloud(tmp_path / "b", ["ERROR: build step 0 failed: exit status 1"])
    result = _stage(env)
    assert result.returncode == 2 and "Cloud Build failed" in result.stderr
    assert [line.split()[:2] for line in calls.read_text().splitlines()] == [
        ["artifacts", "docker"], ["builds", "submit"]]  # not retried, no template written


def test_stage_script_reads_terraform_outputs_and_retags(tmp_path: Path) -> None:
    env, calls, _ = _fake_gcloud(tmp_path, [])
    for name in ("PROJECT", "REGION", "IMAGE", "TEMPLATE_PATH", "BUILD_SERVICE_ACCOUNT", "STAGING_BUCKET"):
        env.pop(name)
    outputs = {"image": {"value": "europe-west4-docker.pkg.dev/proj-1/rs-images/recsys-pipeline:abc"},
               "flex_template_path": {"value": "gs://proj-1-rs-dataflow/templates/streaming-abc.json"},
               "service_accounts": {"value": {"build": "rs-build@proj-1.iam.gserviceaccount.com"}},
               "buckets": {"value": {"staging": "proj-1-rs-dataflow"}}}
    fake = tmp_path / "bin" / "terraform"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(outputs)}\nEOF\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    result = subprocess.run(["bash", str(ROOT / "scripts" / "stage_pipeline.sh"), "--from-terraform", "v2"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    build, template = calls.read_text(encoding="utf-8").splitlines()[1:3]
    assert "--project proj-1 --region europe-west4 " in build
    assert "_IMAGE=europe-west4-docker.pkg.dev/proj-1/rs-images/recsys-pipeline:v2" in build
    assert "projects/proj-1/serviceAccounts/rs-build@proj-1.iam.gserviceaccount.com" in build
    assert "gs://proj-1-rs-dataflow/cloudbuild/source" in build
    assert template.startswith("dataflow flex-template build gs://proj-1-rs-dataflow/templates/streaming-v2.json")


def test_stage_script_refuses_missing_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PROJECT", "IMAGE")}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "stage_pipeline.sh")], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "PROJECT is not set" in result.stderr


# ---------------------------------------------------------------------------
# The checks can fail: broken snippets
# ---------------------------------------------------------------------------

BROKEN = {
    "main.tf": """
terraform {
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

variable "untyped" {
  description = "no type"
}

variable "undescribed" {
  type = string
}

resource "google_service_account" "shared" {
  account_id = "shared"
}

resource "google_pubsub_topic" "dlq" {
  name = var.undescribed
}

resource "google_pubsub_subscription" "no_dlq" {
  name  = "s"
  topic = google_pubsub_topic.missing.id

  dead_letter_policy {
    dead_letter_topic = google_pubsub_topic.dlq.id
  }
}

resource "google_cloud_run_v2_service_iam_member" "open" {
  name   = "svc"
  role   = "roles/run.invoker"
  member = "allUsers"
}

resource "google_cloudfunctions2_function" "a" {
  name = local.nope
  service_config {
    service_account_email = google_service_account.shared.email
  }
}

resource "google_cloudfunctions2_function" "b" {
  name = "b"
  service_config {
    service_account_email = google_service_account.shared.email
  }
}

output "o" {
  value = var.untyped
}
""",
}


@pytest.fixture(scope="module")
def broken() -> Module:
    return parse_module(BROKEN)


def test_broken_snippet_undeclared_references_are_found(broken: Module) -> None:
    problems = undeclared_references(broken)
    assert any("google_pubsub_topic.missing" in p for p in problems)
    assert any("local.nope" in p for p in problems)


def test_broken_snippet_untyped_undescribed_and_unpinned_are_found(broken: Module) -> None:
    assert set(undescribed_variables(broken)) == {"variable untyped has no type",
                                                  "variable undescribed has no description"}
    assert undescribed_outputs(broken) == ["output o has no description"]
    assert unpinned_providers(broken) == ["provider google is not pinned to an exact version: '~> 6.0'"]


def test_broken_snippet_public_member_and_missing_dead_letter_are_found(broken: Module) -> None:
    assert len(unguarded_public_members(broken)) == 1
    problems = dataflow_subscription_problems(broken, "google_pubsub_subscription.no_dlq")
    assert problems == [
        "google_pubsub_subscription.no_dlq has a dead_letter_policy (not supported with Dataflow)",
        "google_pubsub_subscription.no_dlq has no message_retention_duration"]


def test_broken_snippet_shared_service_account_is_found(broken: Module) -> None:
    problems = shared_service_accounts(broken, component_service_accounts(broken))
    assert problems == ["function b shares google_service_account.shared with function a"]


def test_guarded_public_member_is_accepted() -> None:
    guarded = parse_module({"x.tf": """
variable "allow_unauthenticated" {
  type        = bool
  description = "x"
  default     = false
}

resource "google_cloud_run_v2_service_iam_member" "open" {
  count  = var.allow_unauthenticated ? 1 : 0
  name   = "svc"
  role   = "roles/run.invoker"
  member = "allUsers"
}
"""})
    assert unguarded_public_members(guarded) == []
    assert unused_variables(guarded) == []


# ---------------------------------------------------------------------------
# Helpers reading the Python entry points
# ---------------------------------------------------------------------------

# Third-party import -> the distribution that provides it (longest prefix wins).
DIST_FOR_IMPORT = {
    "fastavro": "fastavro",
    "numpy": "numpy",
    "flask": "functions-framework",
    "werkzeug": "functions-framework",
    "functions_framework": "functions-framework",
    "google.cloud.firestore": "google-cloud-firestore",
    "google.cloud.firestore_v1": "google-cloud-firestore",
    "google.cloud.pubsub": "google-cloud-pubsub",
    "google.cloud.pubsub_v1": "google-cloud-pubsub",
    "google.cloud.storage": "google-cloud-storage",
    "google.api_core": "google-api-core",
    "google.auth": "google-auth",
}
# Distributions every google-cloud-* client already depends on.
TRANSITIVE = {"google-api-core", "google-auth"}


def missing_requirements(function_dir: Path) -> list[str]:
    """Third-party modules imported by the function's archive (its folder plus schemas/) that its
    requirements.txt does not provide. Imports guarded by ``except ImportError`` are optional."""
    # Packages the archive adds next to main.py (ARCHIVE_TREES), by import name -> parent folder.
    shared = {"schemas": ROOT, "scoring": ROOT, "httpfn": ROOT / "functions"}
    local_roots = {p.stem for p in function_dir.iterdir() if p.suffix == ".py" or p.is_dir()} | set(shared)
    wanted: dict[str, str] = {}
    seen: set[Path] = set()
    queue = [function_dir / "main.py"]
    while queue:
        path = queue.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for module in _required_imports(path):
            root = module.split(".")[0]
            if module.startswith("."):
                queue += _local_paths(path.parent, module.lstrip("."))
            elif root in local_roots:
                base = shared.get(root, function_dir) if not (function_dir / root).exists() else function_dir
                queue += _local_paths(base, module)
            elif root not in sys.stdlib_module_names and root != "__future__":
                prefix = max((k for k in DIST_FOR_IMPORT if module == k or module.startswith(k + ".")),
                             key=len, default=None)
                wanted[module] = DIST_FOR_IMPORT.get(prefix, f"? (add {module} to DIST_FOR_IMPORT)")
    have = _requirement_names(function_dir / "requirements.txt")
    if any(d.startswith("google-cloud-") for d in have):
        have |= TRANSITIVE
    missing: dict[str, str] = {}
    for module, dist in sorted(wanted.items()):
        if dist not in have:
            missing.setdefault(dist, module)
    return [f"{dist} (import {module})" for dist, module in sorted(missing.items())]


def _required_imports(path: Path) -> list[str]:
    """Modules imported by a file, except inside ``try: ... except ImportError``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
                and any(_catches_import_error(h) for h in t.handlers) for s in t.body for n in ast.walk(s)}
    found = []
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found += [f"{base}.{a.name}" if node.module or node.level else a.name for a in node.names]
    return found


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def _local_paths(base: Path, dotted: str) -> list[Path]:
    """Candidate files of a local module (``a.b.c`` may name a module or an attribute of ``a.b``)."""
    parts = [p for p in dotted.split(".") if p]
    out = []
    for n in range(len(parts), 0, -1):
        stem = base.joinpath(*parts[:n])
        out += [stem.with_suffix(".py"), stem / "__init__.py"]
    return out


def _requirement_names(path: Path) -> set[str]:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: the deployed function installs nothing"
    names_ = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names_.add(re.split(r"[\s=<>!~\[;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names_



def _argparse_flags(path: Path) -> set[str]:
    """Long option names (without dashes) declared with add_argument in a module."""
    flags = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for arg in node.args:
                text = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(text, str) and text.startswith("--"):
                    flags.add(text[2:].replace("_", "-"))
    if "_config_flags" in path.read_text(encoding="utf-8"):  # train.py adds ModelConfig fields as flags
        flags |= _model_config_flags()
    return flags


def _model_config_flags() -> set[str]:
    tree = ast.parse((ROOT / "pipelines" / "training" / "model.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "ModelConfig":
            return {n.target.id.replace("_", "-") for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return set()


def _merge_keys(expr: str) -> list[str]:
    """Keys of the literal map inside ``merge({...}, var.x)``."""
    inner = re.search(r"merge\(\{(.*?)\}", expr, re.S)
    assert inner, f"not a merge of a literal map: {expr!r}"
    return re.findall(r"(\w+)\s*[=:]", inner.group(1))


if __name__ == "__main__":  # pragma: no cover - handy when editing terraform/
    mod = load_dir(TF_DIR)
    for check in (undeclared_references, unused_variables, undescribed_variables, undescribed_outputs,
                  unpinned_providers, unguarded_public_members):
        print(check.__name__, check(mod) or "ok")
    sys.exit(0)


def test_unindexed_fields_are_real_document_fields_with_indexing_disabled(module: Module) -> None:
    import dataclasses

    from schemas.firestore import ItemDoc, UserDoc

    documents = {names.USERS: UserDoc, names.ITEMS: ItemDoc}
    exempt = module.locals["unindexed_fields"]
    assert {(v["collection"], v["field"]) for v in exempt.values()} >= {(names.USERS, "history")}
    for entry in exempt.values():
        codec = documents[entry["collection"]]
        assert entry["field"] in {f.name for f in dataclasses.fields(codec)}, entry
    field_resource = module.resources["google_firestore_field.unindexed"]
    assert field_resource["for_each"] == "${local.unindexed_fields}"
    assert field_resource["index_config"] in ([{}], {}), "an empty index_config disables the indexes"


def test_budget_is_created_only_with_a_billing_account(module: Module) -> None:
    budget = module.resources["google_billing_budget.project"]
    assert budget["count"] == '${var.billing_account == "" ? 0 : 1}'
    assert module.variables["billing_account"]["default"] == ""
    assert "billingbudgets.googleapis.com" in module.locals["services"]


def test_attribution_restart_state_expires_by_firestore_ttl(module: Module) -> None:
    """The pipeline's attribution_served / attribution_pending documents carry expire_at; a TTL
    policy on exactly those collections deletes them."""
    from pipelines.streaming import experiment_io

    ttl = module.resources["google_firestore_field.expire_at"]
    assert first(ttl["ttl_config"]) == {} and ttl["field"] == "expire_at"
    assert set(module.locals["ttl_collections"].values()) == {
        experiment_io.SERVED_COLLECTION, experiment_io.PENDING_COLLECTION}
