"""The playground page at `/playground` (and `/` redirects there): static files shipped in the
package (`gemma_server/playground/`), no build step, nothing loaded from elsewhere. The page
itself holds no secret, so it is served without the API key; it asks for the key and sends it
to the API routes as a Bearer header."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

PAGE_DIR = Path(str(files("gemma_server") / "playground"))
STATIC_PREFIX = "/playground/static"
# Only this origin's scripts, styles and API: the page works offline and nothing injected
# into a model's answer can load or run anything (answers are inserted as text anyway).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

router = APIRouter(tags=["Playground"])


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/playground")


@router.get("/playground", summary="A page to try the served model in a browser",
            response_class=HTMLResponse)
async def playground() -> HTMLResponse:
    return HTMLResponse((PAGE_DIR / "index.html").read_text(encoding="utf-8"),
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """The page's script and style sheet, mounted at STATIC_PREFIX."""
    return StaticFiles(directory=PAGE_DIR)
