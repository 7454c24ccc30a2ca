"""The state every step shares: the config, the figures, the emulators and what to stop.

Passed explicitly to each step so what a step reads and writes is visible in its signature.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts import local_stack
from scripts.demo.config import DemoConfig
from scripts.demo.figures import Figures


@dataclass
class Context:
    """The run's config, its figures, the emulators' settings and the stop callbacks."""

    cfg: DemoConfig
    fig: Figures
    stack: local_stack.StackConfig
    env: dict[str, str]  # what the Google Cloud clients and the children need to find the emulators
    exits: ExitStack = field(default_factory=ExitStack)

    @classmethod
    def create(cls, cfg: DemoConfig) -> Context:
        stack = local_stack.StackConfig(pubsub_port=cfg.pubsub_port,
                                        firestore_port=cfg.firestore_port)
        fig = Figures(config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()})
        return cls(cfg=cfg, fig=fig, stack=stack, env=stack.client_env())

    @property
    def logs(self) -> Path:
        return self.cfg.work_dir / "logs"

    @property
    def model_dir(self) -> Path:
        return self.cfg.work_dir / "models"

    @property
    def archive_dir(self) -> Path:
        return self.cfg.work_dir / "archive"
