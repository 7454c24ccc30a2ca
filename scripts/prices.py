"""List prices the cost model uses: dated constants with their source, in one place.

Prices change; each constant says where it was read and when, so a reader can check it and the
model (``scripts/cost.py``) can be re-run with new figures. USD, us-central1 / Tier 1, before
free tiers and committed-use discounts.
"""

from __future__ import annotations

from dataclasses import dataclass

AS_OF = "2026-12-02"


@dataclass(frozen=True)
class Price:
    """One list price: ``value`` USD per ``unit``, read from ``source`` on ``as_of``."""

    value: float
    unit: str
    source: str
    as_of: str = AS_OF


_RUN = "cloud.google.com/run/pricing (Cloud Run functions bill as Cloud Run), Tier 1"
# Cloud Run functions (gen2) with request-based billing: CPU and memory while serving requests.
RUN_REQUEST_CPU = Price(0.000024, "vCPU-second", _RUN + ", request-based billing")
RUN_REQUEST_MEMORY = Price(0.0000025, "GiB-second", _RUN + ", request-based billing")
RUN_REQUESTS = Price(0.40, "million requests", _RUN + ", request-based billing")
# Instance-based billing (CPU always allocated), what min-instances running all month pay.
RUN_INSTANCE_CPU = Price(0.000018, "vCPU-second", _RUN + ", instance-based billing")
RUN_INSTANCE_MEMORY = Price(0.000002, "GiB-second", _RUN + ", instance-based billing")

_FIRESTORE = "cloud.google.com/firestore/pricing, Standard edition, us-central1"
FIRESTORE_READ = Price(0.03 / 100_000, "document read", _FIRESTORE)
FIRESTORE_WRITE = Price(0.09 / 100_000, "document write", _FIRESTORE)

PUBSUB_THROUGHPUT = Price(40.0, "TiB published or delivered",
                          "cloud.google.com/pubsub/pricing, message delivery")

_DATAFLOW = "cloud.google.com/dataflow/pricing, streaming, us-central1"
DATAFLOW_VCPU = Price(0.069, "vCPU-hour", _DATAFLOW)
DATAFLOW_MEMORY = Price(0.003557, "GB-hour", _DATAFLOW)
DATAFLOW_STREAMING_DATA = Price(0.018, "GB processed by Streaming Engine",
                                _DATAFLOW + ", data-processed billing")
DATAFLOW_DISK = Price(0.000054, "GB-hour of standard persistent disk",
                      "cloud.google.com/dataflow/pricing, persistent disk, us-central1")

_PERSONALIZE = "aws.amazon.com/personalize/pricing, real-time recommendations (custom campaigns)"
# Personalize bills the larger of the provisioned minimum (1 TPS) and the TPS used, per hour, in
# monthly volume tiers: (TPS-hours up to, USD per TPS-hour).
PERSONALIZE_TPS_HOUR_TIERS = ((20_000, 0.20), (200_000, 0.10), (float("inf"), 0.05))
PERSONALIZE_SOURCE = _PERSONALIZE
