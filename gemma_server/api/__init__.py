"""The HTTP layer: FastAPI app, schemas per public API, SSE framing, error rendering."""

from gemma_server.api.app import create_app
from gemma_server.api.state import ServerState

__all__ = ["ServerState", "create_app"]
