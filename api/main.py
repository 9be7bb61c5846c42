"""The ASGI entry point: `uvicorn api.main:app` (the Procfile's web line)."""

from api.app import create_app
from common import logs
from common.settings import get_settings

logs.configure(get_settings().log_level)
app = create_app()
