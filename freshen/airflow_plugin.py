"""freshen's Airflow plugin: the Airflow API server serves the steward previews' images
(``home/previews``) under ``/freshen/previews/``, behind Airflow's own login (the UI's session
cookie or a bearer token), so the approval form can show them. Registered through the
``airflow.plugins`` entry point (pyproject.toml)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/freshen"


def preview_url(path: str) -> str:
    """The URL of a preview image (``home/previews/<change>/<file>.png``) as the Airflow UI
    reaches it."""
    from pathlib import Path

    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="").rstrip("/")
    return f"{base}{URL_PREFIX}/previews/{Path(path).parent.name}/{Path(path).name}"


def _app():
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse

    app = FastAPI(title="freshen", dependencies=[Depends(get_user)])

    @app.get("/previews/{change}/{name}")
    def preview_image(change: str, name: str) -> FileResponse:
        from freshen.config import Settings

        root = (Settings.from_env().home / "previews").resolve()
        path = (root / change / name).resolve()
        if not path.is_relative_to(root) or path.suffix != ".png" or not path.is_file():
            raise HTTPException(status_code=404, detail="no such preview image")
        return FileResponse(path, media_type="image/png")

    return app


class FreshenPlugin(AirflowPlugin):
    name = "freshen"
    fastapi_apps = [{"app": _app(), "url_prefix": URL_PREFIX, "name": "freshen previews"}]
