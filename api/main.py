"""The ASGI entry point: `uvicorn api.main:app` (the Procfile's web line)."""

from api.app import create_app

app = create_app()
