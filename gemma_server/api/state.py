"""What the routes need to know about the running server, shared through `app.state`."""

from __future__ import annotations

import dataclasses
import time

from gemma_server.api.errors import ApiError
from gemma_server.service import ModelService


@dataclasses.dataclass
class ServerState:
    """`service` is None until the model is loaded and warm; `names` are its served names."""

    names: list[str]
    api_keys: list[str] = dataclasses.field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    service: ModelService | None = None
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    status: str = "loading"  # loading, warming, ready, failed

    @property
    def ready(self) -> bool:
        return self.service is not None and self.status == "ready" and self.service.engine.alive

    def resolve(self, model: str, workers_ai: bool = False) -> ModelService:
        """The service for a served name; a clear 404 (OpenAI) / 5007 (Workers AI) otherwise."""
        if model not in self.names:
            if workers_ai:
                raise ApiError(400, f"No such model {model} or task", "model",
                               "model_not_found", 5007)
            raise ApiError(404, f"The model `{model}` does not exist.", "model",
                           "model_not_found", 5007)
        if not self.ready or self.service is None:
            raise ApiError(503, f"The model is not ready yet ({self.status}); retry shortly",
                           None, "model_not_ready", 3040)
        return self.service
