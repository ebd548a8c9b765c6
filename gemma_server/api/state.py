"""What the routes need to know about the running server, shared through `app.state`."""

from __future__ import annotations

import dataclasses
import time

from gemma_server.api.errors import ApiError
from gemma_server.metrics import Metrics
from gemma_server.service import ModelService


@dataclasses.dataclass
class ServerState:
    """`service` is None until the model is loaded and warm; `names` are its served names.
    `metrics` is made by `create_app`; `draining` is set on SIGTERM (server.py)."""

    names: list[str]
    api_keys: list[str] = dataclasses.field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    service: ModelService | None = None
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    status: str = "loading"  # loading, warming, ready, draining, failed
    allow_runtime_lora: bool = False
    max_lora_rank: int = 32
    metrics: Metrics | None = None

    @property
    def draining(self) -> bool:
        return self.status == "draining"

    def engine_stats(self) -> dict[str, int] | None:
        return None if self.service is None else self.service.engine.stats()

    @property
    def ready(self) -> bool:
        return self.service is not None and self.status == "ready" and self.service.engine.alive

    def adapter_names(self) -> list[str]:
        return [] if self.service is None else self.service.engine.adapters.names()

    def resolve(self, model: str, workers_ai: bool = False) -> ModelService:
        """The service for a served or adapter name; 404 (OpenAI) / 5007 (Workers AI) else."""
        if model not in self.names and model not in self.adapter_names():
            if workers_ai:
                raise ApiError(400, f"No such model {model} or task", "model",
                               "model_not_found", 5007)
            raise ApiError(404, f"The model `{model}` does not exist.", "model",
                           "model_not_found", 5007)
        if not self.ready or self.service is None:
            raise ApiError(503, f"The model is not ready yet ({self.status}); retry shortly",
                           None, "model_not_ready", 3040)
        return self.service

    def adapter(self, name: str | None, workers_ai: bool = False) -> int | None:
        """The LoRA row of an adapter name (None or a base name: the base model)."""
        if name is None or name in self.names:
            return None
        row = None if self.service is None else self.service.engine.adapters.row(name)
        if row is None:
            if workers_ai:
                raise ApiError(400, f"No such LoRA adapter {name}", "lora", "model_not_found",
                               5007)
            raise ApiError(404, f"The model `{name}` does not exist.", "model",
                           "model_not_found")
        return row
