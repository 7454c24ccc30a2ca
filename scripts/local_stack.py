"""Local GCP stack on the real emulators: Pub/Sub and Firestore from the gcloud SDK.

    python -m scripts.local_stack start   # start both emulators, create topics/subscriptions
    python -m scripts.local_stack status
    python -m scripts.local_stack env     # print the variables clients need (eval-able)
    python -m scripts.local_stack stop    # stop only the processes this script started

The topics and subscriptions are those of ``terraform/pubsub.tf`` (:data:`TOPICS`), bound to the
same topic schemas, which is none: one event contract locally and on Google Cloud, validated by
the pipeline (``docs/events.md``). ``tests/unit/test_event_contract.py`` compares :data:`TOPICS`
with the Terraform file. Ports and project come from flags or ``PUBSUB_PORT``, ``FIRESTORE_PORT``,
``GOOGLE_CLOUD_PROJECT``. The state (pids, ports) lives in ``.local/stack.json`` and
the client environment in ``.local/stack.env``. The pytest fixtures use the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas import names

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".local"
STATE_FILE = STATE_DIR / "stack.json"
ENV_FILE = STATE_DIR / "stack.env"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class TopicSpec:
    """A topic, its subscription and its Pub/Sub schema binding as ``terraform/pubsub.tf`` declares.

    ``schema_file`` (a file in ``schemas/``) and ``schema_type`` / ``encoding`` are ``None`` for a
    topic without ``schema_settings``.
    """

    topic: str
    subscription: str
    schema_file: str | None = None
    schema_type: str | None = None  # "AVRO" or "PROTOCOL_BUFFER" (the emulator: AVRO only)
    encoding: str | None = None  # "JSON" or "BINARY"


# No topic carries a schema (terraform/pubsub.tf explains why); the pipeline validates.
TOPICS = (TopicSpec(names.EVENTS_TOPIC, names.EVENTS_SUBSCRIPTION),
          TopicSpec(names.DEAD_LETTER_TOPIC, names.DEAD_LETTER_SUBSCRIPTION),
          TopicSpec(names.CATALOG_TOPIC, names.CATALOG_SUBSCRIPTION),
          TopicSpec(names.SERVED_TOPIC, names.SERVED_SUBSCRIPTION))


class StackError(RuntimeError):
    """The local stack could not be started or used; the message says how to fix it."""


@dataclass
class StackConfig:
    project: str = names.DEFAULT_PROJECT
    pubsub_port: int = 8085
    firestore_port: int = 8086
    host: str = HOST
    start_timeout_s: float = 90.0

    @property
    def pubsub_host(self) -> str:
        return f"{self.host}:{self.pubsub_port}"

    @property
    def firestore_host(self) -> str:
        return f"{self.host}:{self.firestore_port}"

    def client_env(self) -> dict[str, str]:
        """The environment variables the Google Cloud clients read."""
        return {"PUBSUB_EMULATOR_HOST": self.pubsub_host,
                "FIRESTORE_EMULATOR_HOST": self.firestore_host,
                "GOOGLE_CLOUD_PROJECT": self.project,
                "PUBSUB_PROJECT_ID": self.project}

    @classmethod
    def from_env(cls) -> StackConfig:
        return cls(project=os.environ.get("GOOGLE_CLOUD_PROJECT", names.DEFAULT_PROJECT),
                   pubsub_port=int(os.environ.get("PUBSUB_PORT", 8085)),
                   firestore_port=int(os.environ.get("FIRESTORE_PORT", 8086)))


@dataclass
class StackState:
    config: StackConfig
    pids: dict[str, int] = field(default_factory=dict)  # name -> process-group leader pid


def check_prerequisites() -> str:
    """The gcloud path; raise ``StackError`` with install instructions if gcloud or Java is missing."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise StackError("gcloud not found on PATH. Install the Google Cloud SDK "
                         "(https://cloud.google.com/sdk/docs/install) with the emulators: "
                         "`gcloud components install beta pubsub-emulator cloud-firestore-emulator` "
                         "or on Debian `apt-get install google-cloud-cli "
                         "google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator`.")
    if shutil.which("java") is None:
        raise StackError("java not found on PATH: the emulators need a Java 17+ runtime. "
                         "On Debian: `apt-get install openjdk-17-jre-headless`.")
    return gcloud


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def emulator_healthy(host_port: str) -> bool:
    """Both emulators answer ``GET /`` with ``Ok`` once they accept requests."""
    try:
        with urllib.request.urlopen(f"http://{host_port}/", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _emulator_command(gcloud: str, name: str, config: StackConfig, data_dir: Path) -> list[str]:
    if name == "pubsub":
        return [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={config.pubsub_host}",
                f"--project={config.project}", f"--data-dir={data_dir}", "--quiet"]
    return [gcloud, "emulators", "firestore", "start", f"--host-port={config.firestore_host}",
            "--quiet"]


def start_emulator(name: str, config: StackConfig, log_dir: Path) -> int:
    """Start one emulator in its own process group; wait until healthy; return its pid."""
    gcloud = check_prerequisites()
    host_port = config.pubsub_host if name == "pubsub" else config.firestore_host
    port = config.pubsub_port if name == "pubsub" else config.firestore_port
    if port_open(config.host, port):
        raise StackError(f"port {port} is already in use: another {name} emulator or service "
                         f"is running there. Stop it, or choose another port "
                         f"({name.upper()}_PORT or --{name}-port).")
    log_dir.mkdir(parents=True, exist_ok=True)
    data_dir = log_dir / f"{name}-data"
    data_dir.mkdir(exist_ok=True)
    log = open(log_dir / f"{name}.log", "wb")
    proc = subprocess.Popen(_emulator_command(gcloud, name, config, data_dir), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + config.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise StackError(f"the {name} emulator exited with code {proc.returncode}:\n{tail}")
        if emulator_healthy(host_port):
            return proc.pid
        time.sleep(0.3)
    _kill_group(proc.pid)
    raise StackError(f"the {name} emulator did not become healthy on {host_port} within "
                     f"{config.start_timeout_s:.0f} s; see {log_dir / f'{name}.log'}")


def _kill_group(pid: int, timeout_s: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect our exited child so it does not linger as a zombie in its process group."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (started by an earlier command) or already reaped
        pass


def create_topic(publisher: Any, project: str, spec: TopicSpec, topic_id: str | None = None) -> str:
    """Create (idempotently) ``spec``'s topic, bound to its schema if it has one; return its path.

    The schema is registered as ``<topic id>-schema`` from ``schemas/<schema_file>``, as Terraform
    registers it from the same file.
    """
    from google.api_core.exceptions import AlreadyExists

    topic_path = publisher.topic_path(project, topic_id or spec.topic)
    request: dict[str, Any] = {"name": topic_path}
    if spec.schema_file is not None:
        from google.pubsub_v1 import Encoding, Schema, SchemaServiceClient

        schema_id = f"{topic_id or spec.topic}-schema"
        client = SchemaServiceClient()
        schema_path = client.schema_path(project, schema_id)
        try:
            client.create_schema(parent=f"projects/{project}", schema_id=schema_id, schema=Schema(
                name=schema_path, type_=Schema.Type[spec.schema_type or "AVRO"],
                definition=(ROOT / "schemas" / spec.schema_file).read_text(encoding="utf-8")))
        except AlreadyExists:
            pass
        request["schema_settings"] = {"schema": schema_path,
                                      "encoding": Encoding[spec.encoding or "JSON"]}
    try:
        publisher.create_topic(request=request)
    except AlreadyExists:
        pass
    return topic_path


def create_pubsub_resources(config: StackConfig) -> dict[str, str]:
    """Create (idempotently) the topics and subscriptions the system uses (:data:`TOPICS`)."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    env_backup = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = config.pubsub_host
    try:
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        created = {}
        for spec in TOPICS:
            topic_path = create_topic(publisher, config.project, spec)
            sub_path = subscriber.subscription_path(config.project, spec.subscription)
            try:
                subscriber.create_subscription(name=sub_path, topic=topic_path,
                                               ack_deadline_seconds=60)
            except AlreadyExists:
                pass
            created[spec.topic] = spec.subscription
        subscriber.close()
        return created
    finally:
        if env_backup is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = env_backup


def write_env_file(config: StackConfig, path: Path = ENV_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"export {k}={v}\n" for k, v in config.client_env().items()))


def load_state(path: Path = STATE_FILE) -> StackState | None:
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return StackState(config=StackConfig(**raw["config"]), pids=raw["pids"])


def save_state(state: StackState, path: Path = STATE_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": asdict(state.config), "pids": state.pids}, indent=2))


def start(config: StackConfig, state_dir: Path = STATE_DIR) -> StackState:
    """Start both emulators (unless this script's are already up) and create resources."""
    state_file = state_dir / "stack.json"
    existing = load_state(state_file)
    if existing and all(_alive(p) for p in existing.pids.values()) and existing.pids:
        if (emulator_healthy(existing.config.pubsub_host)
                and emulator_healthy(existing.config.firestore_host)):
            create_pubsub_resources(existing.config)
            return existing
    state = StackState(config=config)
    try:
        state.pids["pubsub"] = start_emulator("pubsub", config, state_dir)
        save_state(state, state_file)
        state.pids["firestore"] = start_emulator("firestore", config, state_dir)
        save_state(state, state_file)
        create_pubsub_resources(config)
    except BaseException:
        stop_state(state)
        state_file.unlink(missing_ok=True)
        raise
    write_env_file(config, state_dir / "stack.env")
    return state


def stop_state(state: StackState) -> None:
    for pid in state.pids.values():
        _kill_group(pid)


def stop(state_dir: Path = STATE_DIR) -> bool:
    """Stop the emulators this script started (recorded in the state file)."""
    state = load_state(state_dir / "stack.json")
    if state is None:
        return False
    stop_state(state)
    (state_dir / "stack.json").unlink(missing_ok=True)
    (state_dir / "stack.env").unlink(missing_ok=True)
    return True


def clear_firestore(config: StackConfig) -> None:
    """Delete every document in the Firestore emulator (emulator-only endpoint)."""
    req = urllib.request.Request(
        f"http://{config.firestore_host}/emulator/v1/projects/{config.project}"
        "/databases/(default)/documents", method="DELETE")
    with urllib.request.urlopen(req, timeout=10):
        pass


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def status(state_dir: Path = STATE_DIR) -> dict[str, object]:
    state = load_state(state_dir / "stack.json")
    if state is None:
        return {"running": False}
    cfg = state.config
    return {"running": True, "project": cfg.project,
            "pubsub": {"host": cfg.pubsub_host, "pid": state.pids.get("pubsub"),
                       "healthy": emulator_healthy(cfg.pubsub_host)},
            "firestore": {"host": cfg.firestore_host, "pid": state.pids.get("firestore"),
                          "healthy": emulator_healthy(cfg.firestore_host)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    defaults = StackConfig.from_env()
    parser.add_argument("--project", default=defaults.project)
    parser.add_argument("--pubsub-port", type=int, default=defaults.pubsub_port)
    parser.add_argument("--firestore-port", type=int, default=defaults.firestore_port)
    args = parser.parse_args(argv)
    config = StackConfig(project=args.project, pubsub_port=args.pubsub_port,
                         firestore_port=args.firestore_port)
    try:
        if args.command == "start":
            state = start(config)
            print(f"Pub/Sub emulator   {state.config.pubsub_host}  (pid {state.pids['pubsub']})")
            print(f"Firestore emulator {state.config.firestore_host}  (pid {state.pids['firestore']})")
            print(f"Client environment written to {ENV_FILE.relative_to(ROOT)}: "
                  f"`source {ENV_FILE.relative_to(ROOT)}`")
        elif args.command == "stop":
            print("stopped" if stop() else "nothing to stop (no stack started by this script)")
        elif args.command == "status":
            print(json.dumps(status(), indent=2))
            return 0 if status().get("running") else 1
        else:
            state = load_state()
            cfg = state.config if state else config
            for k, v in cfg.client_env().items():
                print(f"export {k}={v}")
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
