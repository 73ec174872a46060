"""TLS at the gateway, natively: real nginx rendered by the launcher with TLS_CERT_FILE and
TLS_KEY_FILE, in front of the session stack's real API, with a CA and a server certificate
this module makes with the `openssl` command line.

The checks a client would make: HTTPS predict verifies against the CA (and fails without
it), plain HTTP redirects to HTTPS, HSTS is sent on HTTPS only, TLS 1.0/1.1 and weak
ciphers are refused at the handshake.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from native.stack import NativeStack, free_port

from .conftest import BOOK_REQUEST, LiveStack, wait_for

HSTS = "max-age=63072000"


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not installed (Debian package openssl)"
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A private CA and a certificate for 127.0.0.1 it signed, as a user would make them."""
    d = tmp_path_factory.mktemp("tls")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tpotserve test CA",
        "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr", cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d,
    )
    return Certs(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


def _every_api_worker_serves(stack: LiveStack) -> None:
    """The session fixture returns once one Gunicorn worker serves; these tests need them all."""
    wait_for(lambda: all(stack.worker_versions(min_requests=10).values()), 60, what="every API worker serving")


@dataclass
class TlsGateway:
    native: NativeStack

    @property
    def http(self) -> str:
        return self.native.gateway_url

    @property
    def https(self) -> str:
        return self.native.gateway_tls_url


@pytest.fixture(scope="module")
def gateway(stack: LiveStack, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    """A second nginx, TLS on, in front of the session stack's API (same launcher, same templates)."""
    native = NativeStack(
        data_dir=tmp_path_factory.mktemp("tls-gateway"),
        gateway_port=free_port(),
        gateway_tls_port=free_port(),
        env={**stack.native.env, "TLS_CERT_FILE": str(certs.cert), "TLS_KEY_FILE": str(certs.key)},
    )
    native.api_port = stack.native.api_port
    assert native.gateway_tls() == "on"
    _every_api_worker_serves(stack)
    try:
        native.start(services=("nginx",))
        yield TlsGateway(native)
    finally:
        native.stop()


def test_https_predict_answers_the_book_client_with_the_ca_given(gateway: TlsGateway, certs: Certs) -> None:
    response = requests.post(gateway.https + "/predict", json=BOOK_REQUEST, verify=str(certs.ca), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["Prediction"] in {"setosa", "versicolor", "virginica"}
    assert response.headers["Strict-Transport-Security"] == HSTS


def test_https_without_the_ca_fails_verification(gateway: TlsGateway) -> None:
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.post(gateway.https + "/predict", json=BOOK_REQUEST, timeout=10)


@pytest.mark.parametrize("path", ["/predict", "/models", "/", "/rq/", "/metrics"])
def test_plain_http_is_redirected_to_https(gateway: TlsGateway, path: str) -> None:
    response = requests.post(gateway.http + path, json=BOOK_REQUEST, allow_redirects=False, timeout=10)
    assert response.status_code == 308
    assert response.headers["Location"] == f"{gateway.https}{path}"
    assert "Strict-Transport-Security" not in response.headers  # HSTS over HTTP means nothing


def test_a_client_following_the_redirect_gets_its_prediction(gateway: TlsGateway, certs: Certs) -> None:
    """308 keeps the method and body: the book's POST arrives as a POST over HTTPS."""
    response = requests.post(gateway.http + "/predict", json=BOOK_REQUEST, verify=str(certs.ca), timeout=10)
    assert response.status_code == 200, response.text
    assert [r.status_code for r in response.history] == [308]
    assert response.url == gateway.https + "/predict"


def test_liveness_and_acme_challenges_stay_on_plain_http(gateway: TlsGateway) -> None:
    assert requests.get(gateway.http + "/healthz", allow_redirects=False, timeout=10).status_code == 200
    challenge = gateway.native.data_dir / "acme" / ".well-known" / "acme-challenge" / "token-123"
    challenge.parent.mkdir(parents=True, exist_ok=True)
    challenge.write_text("token-123.thumbprint")
    response = requests.get(gateway.http + "/.well-known/acme-challenge/token-123", allow_redirects=False, timeout=10)
    assert response.status_code == 200
    assert response.text == "token-123.thumbprint"


@pytest.mark.parametrize("path", ["/", "/assets/app.js", "/predict", "/no-such-page", "/rq/"])
def test_hsts_is_on_every_https_answer(gateway: TlsGateway, certs: Certs, path: str) -> None:
    """Also where a location has add_header of its own (nginx drops inherited ones there)."""
    response = requests.get(gateway.https + path, verify=str(certs.ca), timeout=10)
    assert response.headers.get("Strict-Transport-Security") == HSTS, (path, response.status_code)


def _handshake(port: int, maximum: ssl.TLSVersion, ciphers: str = "DEFAULT:@SECLEVEL=0") -> str:
    """The protocol a client limited to ``maximum`` (and ``ciphers``) negotiates, or an SSLError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 are deprecated: the point
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    # SECLEVEL=0 so that it is the server, not this client's OpenSSL, that says no.
    context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            return tls.version() or ""


def test_the_old_protocol_client_can_speak_tls_1_1(certs: Certs) -> None:
    """Control: against a server that allows it, _handshake() does negotiate TLS 1.1, so the
    refusal below is nginx's doing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.load_cert_chain(certs.cert, certs.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            server.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert _handshake(port, ssl.TLSVersion.TLSv1_1) == "TLSv1.1"
    finally:
        thread.join(timeout=5)
        listener.close()


@pytest.mark.parametrize("old", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"])
def test_tls_1_0_and_1_1_are_refused(gateway: TlsGateway, old: ssl.TLSVersion) -> None:
    port = gateway.native.gateway_tls_port
    assert _handshake(port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert _handshake(port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        _handshake(port, old)


@pytest.mark.parametrize("weak", ["AES128-SHA", "AES256-SHA256", "DES-CBC3-SHA", "ECDHE-RSA-AES128-SHA"])
def test_weak_tls_1_2_ciphers_are_refused(gateway: TlsGateway, weak: str) -> None:
    """No static-RSA key exchange, no CBC, no 3DES; ECDHE with AES-GCM is accepted."""
    port = gateway.native.gateway_tls_port
    assert _handshake(port, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256") == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        _handshake(port, ssl.TLSVersion.TLSv1_2, f"{weak}:@SECLEVEL=0")


def test_without_a_certificate_the_gateway_serves_plain_http(stack: LiveStack) -> None:
    """The session stack has no TLS_*: plain HTTP answers, no redirect, no HSTS."""
    assert stack.native.gateway_tls() == "off"
    response = requests.post(stack.url + "/predict", json=BOOK_REQUEST, allow_redirects=False, timeout=10)
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers


def _served_certificate(port: int) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True) or b""


def _der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


def test_a_renewal_through_the_certbot_hook_is_served_without_a_failed_request(
    stack: LiveStack, certs: Certs, tmp_path: Path
) -> None:
    """deploy/certbot-deploy-hook.sh as certbot runs it: the first certificate, then a renewal
    and an nginx reload while a client keeps predicting over HTTPS, retrying once on a closed
    connection as any HTTP client should."""
    hook = Path(__file__).resolve().parents[2] / "deploy" / "certbot-deploy-hook.sh"
    tls_dir, lineage = tmp_path / "tls", tmp_path / "live"
    lineage.mkdir()
    owner = {"TLS_DIR": str(tls_dir), "TLS_OWNER": f"{os.getuid()}:{os.getgid()}"}

    def certbot_deploys(cert: Path, key: Path, reload: str) -> None:
        shutil.copy(cert, lineage / "fullchain.pem")
        shutil.copy(key, lineage / "privkey.pem")
        env = {**os.environ, **owner, "RENEWED_LINEAGE": str(lineage), "RELOAD_COMMAND": reload}
        subprocess.run([str(hook)], env=env, check=True, capture_output=True)

    certbot_deploys(certs.cert, certs.key, reload="true")  # the first issue: nginx not running yet
    assert oct((tls_dir / "privkey.pem").stat().st_mode & 0o777) == "0o600"
    native = NativeStack(
        data_dir=tmp_path / "data",
        gateway_port=free_port(),
        gateway_tls_port=free_port(),
        env={
            **stack.native.env,
            "TLS_CERT_FILE": str(tls_dir / "fullchain.pem"),
            "TLS_KEY_FILE": str(tls_dir / "privkey.pem"),
        },
    )
    native.api_port = stack.native.api_port
    _every_api_worker_serves(stack)
    failures: list[str] = []
    retried: list[str] = []
    answered = 0
    stop = threading.Event()

    session = requests.Session()

    def predict() -> requests.Response:
        return session.post(native.gateway_tls_url + "/predict", json=BOOK_REQUEST, verify=str(certs.ca), timeout=10)

    def client() -> None:
        # One keep-alive connection, as a long-lived client keeps. A reload lets requests in flight
        # finish, but nginx's old workers close idle keep-alive connections: a client reusing one
        # at that instant sees it closed and retries once (predictions are idempotent), as
        # docs/deploy.md tells clients to.
        nonlocal answered
        while not stop.is_set():
            try:
                try:
                    r = predict()
                except requests.ConnectionError as exc:
                    retried.append(repr(exc))
                    r = predict()
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:100]}")
            except requests.RequestException as exc:
                failures.append(repr(exc))
            answered += 1

    thread = threading.Thread(target=client, daemon=True)
    try:
        native.start(services=("nginx",))
        port = native.gateway_tls_port
        assert _served_certificate(port) == _der(certs.cert)
        thread.start()
        wait_for(lambda: answered >= 20, 30, what="a client predicting over HTTPS")

        # The renewal: a new key and certificate from the same CA.
        d = certs.ca.parent
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                 "-keyout", "renewed.key", "-out", "renewed.csr", cwd=d)
        _openssl("x509", "-req", "-in", "renewed.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "san.ext", "-out", "renewed.pem", cwd=d)
        master = native.processes["nginx"].popen.pid
        certbot_deploys(d / "renewed.pem", d / "renewed.key", reload=f"kill -HUP {master}")
        wait_for(lambda: _served_certificate(port) == _der(d / "renewed.pem"), 30, what="the renewed certificate")
        seen = answered
        wait_for(lambda: answered >= seen + 20, 30, what="predictions after the reload")
    finally:
        stop.set()
        if thread.is_alive():  # its last request must finish before nginx stops
            thread.join(timeout=30)
        native.stop()
    assert not failures, (
        f"{len(failures)} of {answered} requests failed across the renewal (after one retry): {failures[:3]}"
    )
    # One sequential client, one reload: at most its one connection can be caught idle.
    assert len(retried) <= 1, f"more closed connections than one reload explains: {retried}"
