"""Gunicorn's entry point: ``tpotserve_api.wsgi:app``."""

from tpotserve_api.app import create_app

app = create_app()
