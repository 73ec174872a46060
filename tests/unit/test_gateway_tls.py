"""When TLS is on: nginx/entrypoint.d/15-tpotserve-tls.envsh decides, for the nginx image and
(through NativeStack.gateway_tls) the native run alike. Runs the real script under sh."""

from __future__ import annotations

from pathlib import Path

import pytest

from native.stack import NativeStack


@pytest.fixture
def pem(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not parsed by the script\n")
    key.write_text("not parsed by the script\n")
    return cert, key


def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> NativeStack:
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return NativeStack(data_dir=tmp_path / "data", env={"MODEL_SIGNING_KEY": "k", **env})


def test_neither_file_means_plain_http(tmp_path, monkeypatch) -> None:
    assert stack(tmp_path, monkeypatch).gateway_tls() == "off"


def test_both_readable_files_mean_tls(tmp_path, monkeypatch, pem) -> None:
    cert, key = pem
    assert stack(tmp_path, monkeypatch, TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key)).gateway_tls() == "on"


def test_relative_paths_are_made_absolute_for_nginx(tmp_path, monkeypatch, pem) -> None:
    cert, key = pem
    monkeypatch.chdir(tmp_path)
    native = stack(tmp_path, monkeypatch, TLS_CERT_FILE="cert.pem", TLS_KEY_FILE="key.pem")
    assert native.gateway_tls() == "on"
    conf = (native.render_nginx().parent / "conf.d" / "tpotserve" / "tls-on.conf").read_text()
    assert f"ssl_certificate {cert};" in conf and f"ssl_certificate_key {key};" in conf


@pytest.mark.parametrize("given", ["TLS_CERT_FILE", "TLS_KEY_FILE"])
def test_only_one_of_the_two_refuses_to_start(tmp_path, monkeypatch, pem, given) -> None:
    native = stack(tmp_path, monkeypatch, **{given: str(pem[0])})
    with pytest.raises(RuntimeError, match="set both TLS_CERT_FILE and TLS_KEY_FILE, or neither"):
        native.gateway_tls()


def test_a_missing_file_refuses_to_start_rather_than_serve_plain_http(tmp_path, monkeypatch, pem) -> None:
    native = stack(tmp_path, monkeypatch, TLS_CERT_FILE=str(pem[0]), TLS_KEY_FILE=str(tmp_path / "nope.pem"))
    with pytest.raises(RuntimeError, match="cannot read .*nope.pem"):
        native.gateway_tls()


@pytest.mark.parametrize("tls", [False, True], ids=["off", "on"])
def test_the_rendered_gateway_includes_exactly_one_mode(tmp_path, monkeypatch, pem, tls) -> None:
    env = {"TLS_CERT_FILE": str(pem[0]), "TLS_KEY_FILE": str(pem[1])} if tls else {}
    conf_dir = stack(tmp_path, monkeypatch, **env).render_nginx().parent / "conf.d"
    default = (conf_dir / "default.conf").read_text()
    mode = "on" if tls else "off"
    assert f"include {conf_dir}/tpotserve/tls-{mode}.conf;" in default
    assert "${" not in default
    included = (conf_dir / "tpotserve" / f"tls-{mode}.conf").read_text()
    assert ("listen 127.0.0.1:8443 ssl;" in included) is tls
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in included if tls else "ssl_" not in included
