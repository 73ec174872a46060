"""nginx's config for the native run: the compose templates rendered into DATA_DIR/nginx, TLS on or off.

The same templates the nginx image's envsubst step fills (nginx/templates) and the same TLS
script its entrypoint sources decide what nginx serves, so a native run and compose agree.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tpotserve.settings import Settings

from . import REPO

NGINX_TEMPLATE_DIR = "nginx/templates"
NGINX_TEMPLATE = "nginx/templates/default.conf.template"
NGINX_MAIN_TEMPLATE = "nginx/native.conf.template"
# Sourced by the nginx image's entrypoint and by render_nginx(): sets GATEWAY_TLS.
NGINX_TLS_SCRIPT = "nginx/entrypoint.d/15-tpotserve-tls.envsh"

# Settings the nginx template reads (compose passes the same names to the nginx image).
NGINX_SETTINGS = (
    "MAX_BODY_BYTES",
    "METRICS_ALLOW",
    "PREDICT_RATE_LIMIT",
    "PREDICT_RATE_BURST",
    "RETRAIN_RATE_LIMIT",
    "RETRAIN_RATE_BURST",
)
_PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Substitute ``${NAME}`` like the nginx image's envsubst step: only names given."""
    rendered = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    missing = sorted(set(_PLACEHOLDER.findall(rendered)))
    if missing:
        raise ValueError(f"template needs values for {missing}")
    return rendered


def gateway_tls(env: Mapping[str, str]) -> str:
    """"on" or "off", decided by the same script the nginx image sources at start.

    ``env`` is nginx's environment (:meth:`native.stack.NativeStack.service_env`)."""
    result = subprocess.run(
        ["sh", "-c", '. "$0" && printf %s "$GATEWAY_TLS"', str(REPO / NGINX_TLS_SCRIPT)],
        env={**env, **tls_files(env)},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or result.stdout not in ("on", "off"):
        raise RuntimeError(f"nginx TLS settings: {result.stderr.strip() or result.stdout!r}")
    return result.stdout


def tls_files(env: Mapping[str, str]) -> dict[str, str]:
    """TLS_CERT_FILE / TLS_KEY_FILE as absolute paths ("" when unset): nginx would
    resolve a relative one against its own prefix, not the directory they were given in."""
    return {
        name: str(Path(env[name]).resolve()) if env.get(name) else ""
        for name in ("TLS_CERT_FILE", "TLS_KEY_FILE")
    }


def setting(env: Mapping[str, str], name: str) -> str:
    """A setting as the services see it: their environment, else the Settings default."""
    value = env.get(name)
    return value if value else str(Settings.model_fields[name.lower()].default)


def render_nginx(
    *,
    data_dir: Path,
    env: Mapping[str, str],
    api_ports: Sequence[int],
    gateway_port: int,
    gateway_tls_port: int,
    rq_dashboard_port: int,
) -> Path:
    """Render every template under nginx/templates into DATA_DIR/nginx/conf.d, as the image's
    envsubst step does into /etc/nginx/conf.d, and the main config that includes them.

    ``env`` is nginx's environment; the path returned is the main config's."""
    nginx_dir = data_dir / "nginx"
    conf_dir = nginx_dir / "conf.d"
    acme_root = data_dir / "acme"
    acme_root.mkdir(parents=True, exist_ok=True)
    values = {
        "API_SERVERS": "\n    ".join(f"server 127.0.0.1:{port};" for port in api_ports),
        "NGINX_LISTEN": f"127.0.0.1:{gateway_port}",
        "NGINX_TLS_LISTEN": f"127.0.0.1:{gateway_tls_port}",
        "GATEWAY_TLS_PORT": str(gateway_tls_port),
        "GATEWAY_TLS": gateway_tls(env),
        **tls_files(env),
        "NGINX_CONF_DIR": str(conf_dir),
        "ACME_ROOT": str(acme_root),
        # Only IP addresses here: nothing to resolve, but the directive must be valid.
        "RESOLVER": "127.0.0.1",
        "WEB_ROOT": str(REPO / "web"),
        "RQ_DASHBOARD_URL": f"http://127.0.0.1:{rq_dashboard_port}",
        # The same values the API reads, e.g. so both refuse the same bodies.
        **{name: setting(env, name) for name in NGINX_SETTINGS},
    }
    templates = REPO / NGINX_TEMPLATE_DIR
    for template in sorted(templates.rglob("*.template")):
        out = conf_dir / template.relative_to(templates).with_suffix("")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_template(template.read_text(), values))
    main_conf = nginx_dir / "nginx.conf"
    main_conf.write_text(
        render_template(
            (REPO / NGINX_MAIN_TEMPLATE).read_text(),
            {
                "DATA_DIR_NGINX": str(nginx_dir),
                "SERVER_CONF": str(conf_dir / "default.conf"),
                # `user` is only allowed (and only needed) when the master runs as root.
                "NGINX_USER": f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else "",
            },
        )
    )
    return main_conf
