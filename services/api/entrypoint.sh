#!/bin/sh
# The API's one start command, used by the container and by the native launcher alike.
set -eu
exec gunicorn --config python:tpotserve_api.gunicorn_config tpotserve_api.wsgi:app
