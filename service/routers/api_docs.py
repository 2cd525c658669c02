"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), served from ``web/``.

Their libraries are this service's own files (``web/vendor/``, fetched and checked by ``make
vendor-docs``), not a CDN's: the pages work without the internet, and no third-party script sees the
token a user types into "Authorize". Public, like the schema they read (``docs/security.md``).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from v1motion.service.deps import SettingsDep
from v1motion.service.security import API_DOCS_POLICY

router = APIRouter(include_in_schema=False)


def _page(settings: SettingsDep, name: str) -> FileResponse:
    path = settings.web_dir / name
    if not path.is_file():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no API documentation page: {name} is not in the web folder (V1MOTION_WEB_DIR)",
        )
    return FileResponse(
        path, media_type="text/html", headers={"content-security-policy": API_DOCS_POLICY}
    )


@router.get("/docs")
def swagger_ui(settings: SettingsDep) -> FileResponse:
    """Swagger UI: every operation, with "Try it out"."""
    return _page(settings, "docs.html")


@router.get("/redoc")
def redoc(settings: SettingsDep) -> FileResponse:
    """ReDoc: the same schema as one reference page."""
    return _page(settings, "redoc.html")
