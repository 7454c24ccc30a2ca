"""One event contract locally and on Google Cloud: the local stack creates the topics of
terraform/pubsub.tf with the same schema binding (none), and the wire format documented in
docs/events.md is what the publishers write and the pipeline reads.

:func:`terraform_topics` reads the topics as Terraform declares them; the integration test
(tests/integration/test_event_contract.py) applies them to emulator topics.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

from schemas.errors import InvalidRecord
from schemas.events import parse_event, validate_event
from scripts import local_stack
from scripts.local_stack import TopicSpec

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "terraform"
DOC = ROOT / "docs" / "events.md"
HCL = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
FILE_REF = re.compile(r'\$\{file\("\$\{path\.module\}/\.\./schemas/([^"/]+)"\)\}')
NOW_MS = int(time.time() * 1000)


def _resources(text: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for block in hcl2.loads(text, serialization_options=HCL).get("resource", []):
        for rtype, named in block.items():
            for name, body in named.items():
                out[f"{rtype}.{name}"] = body
    return out


def _var_defaults() -> dict[str, Any]:
    text = (TF_DIR / "variables.tf").read_text(encoding="utf-8")
    return {name: body.get("default") for block in hcl2.loads(text, serialization_options=HCL)["variable"]
            for name, body in block.items()}


def _ref(expr: str) -> str:
    match = re.fullmatch(r"\$\{([\w.]+?)(?:\.(?:id|name))?\}", expr)
    assert match, f"not a plain reference: {expr!r}"
    return match.group(1)


def terraform_topics(pubsub_tf: str | None = None) -> dict[str, TopicSpec]:
    """The topics of ``terraform/pubsub.tf`` (or of ``pubsub_tf``), by topic name, with their
    pipeline/inspection subscription and schema binding, variable defaults resolved."""
    text = pubsub_tf if pubsub_tf is not None else (TF_DIR / "pubsub.tf").read_text(encoding="utf-8")
    resources, defaults = _resources(text), _var_defaults()
    out = {}
    for key, topic in resources.items():
        if not key.startswith("google_pubsub_topic."):
            continue
        name = defaults[_ref(topic["name"]).removeprefix("var.")]
        [sub] = [defaults[_ref(body["name"]).removeprefix("var.")] for k, body in resources.items()
                 if k.startswith("google_pubsub_subscription.") and _ref(body["topic"]) == key]
        spec = TopicSpec(name, sub)
        if topic.get("schema_settings"):
            [settings] = topic["schema_settings"]
            schema = resources[_ref(settings["schema"])]
            match = FILE_REF.fullmatch(schema["definition"])
            assert match, f"schema definition is not file(../schemas/...): {schema['definition']!r}"
            spec = TopicSpec(name, sub, match.group(1), schema["type"], settings.get("encoding", "JSON"))
        out[name] = spec
    return out


def test_the_local_stack_creates_terraforms_topics_with_the_same_binding():
    assert {t.topic: t for t in local_stack.TOPICS} == terraform_topics()


def test_no_topic_is_bound_to_a_schema():
    """The choice (docs/events.md): a bound Avro schema refuses the minimal event, the emulator
    has no Protocol Buffer schemas, so the pipeline validates every message."""
    assert all(t.schema_file is None for t in terraform_topics().values())
    assert not [k for k in _resources((TF_DIR / "pubsub.tf").read_text(encoding="utf-8"))
                if k.startswith("google_pubsub_schema.")]


def test_the_reader_sees_a_binding():
    topics = terraform_topics(_BOUND)  # the binding pubsub.tf had before docs/events.md
    assert topics["product-events"] == TopicSpec("product-events", "product-events-pipeline",
                                                 "product_event.avsc", "AVRO", "JSON")
    assert topics["product-events-dead-letter"].schema_file is None


_BOUND = """
resource "google_pubsub_schema" "product_event" {
  type       = "AVRO"
  definition = file("${path.module}/../schemas/product_event.avsc")
}
resource "google_pubsub_topic" "events" {
  name = var.events_topic
  schema_settings {
    schema   = google_pubsub_schema.product_event.id
    encoding = "JSON"
  }
}
resource "google_pubsub_subscription" "events_pipeline" {
  name  = var.events_subscription
  topic = google_pubsub_topic.events.id
}
resource "google_pubsub_topic" "dead_letter" {
  name = var.dead_letter_topic
}
resource "google_pubsub_subscription" "dead_letter" {
  name  = var.dead_letter_subscription
  topic = google_pubsub_topic.dead_letter.id
}
"""


# ---------------------------------------------------------------------------- the wire format


def test_publishers_write_the_documented_plain_json():
    minimal = {"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1",
               "timestamp": NOW_MS}
    assert json.loads(validate_event(minimal).to_pubsub_data()) == minimal
    full = {**minimal, "session_id": "s1", "context": {"page": "home"}}
    assert json.loads(validate_event(full).to_pubsub_data()) == full


def _json_blocks(markdown: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", markdown, flags=re.S)


def test_the_documented_examples_are_what_they_say():
    """docs/events.md: every ``json`` block parses as an accepted event, except those marked
    ``rejected:`` on the line before, which name the field blamed."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"(?:<!-- (rejected: \w+) -->\n)?```json\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    for mark, body in blocks:
        if mark:
            with pytest.raises(InvalidRecord) as info:
                parse_event(body)
            assert info.value.field == mark.split()[-1]
        else:
            assert parse_event(body).event_id
    gcloud = re.search(r"^\s+--message='(.+)' \\$", text, flags=re.M)
    assert gcloud and "gcloud pubsub topics publish product-events" in text, "no gcloud example"
    message = gcloud.group(1).replace("'\"$(date +%s000)\"'", str(NOW_MS))  # the shell's quoting
    assert parse_event(message).event_type == "view"
