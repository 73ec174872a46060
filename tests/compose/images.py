"""Local look-alikes of the official base images, for the compose test.

Docker Hub cannot be reached where the tests run, so the images the project's
Dockerfiles and docker-compose.yml name are built here from Debian packages, under
exactly those names: a debootstrapped Debian root file system becomes a base image,
and tests/compose/lookalikes/<name>/Dockerfile reproduces the official image's users,
uids, workdirs, volumes, entrypoint behaviour and commands on top of it.

Each look-alike carries a label with the hash of its recipe; a tag that already holds
that recipe is reused (the first build takes minutes, later ones nothing). A tag that
holds an image without the label is a real official image and is never replaced.

    python -m tests.compose.images        # build (or reuse) all three, print their tags
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES = HERE / "lookalikes"
LABEL = "org.tpotserve.test.lookalike"
MIRROR = "http://deb.debian.org/debian"
# This host's CA bundle: pip inside the test build reaches PyPI only through a TLS
# proxy this bundle trusts. Only the python look-alike (a test image) gets it.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Lookalike:
    tag: str
    recipe: str
    suite: str
    """The Debian release its root file system is debootstrapped from."""
    host_ca: bool = False


LOOKALIKES = (
    Lookalike("python:3.11-slim-bookworm", "python", "bookworm", host_ca=True),
    Lookalike("redis:7-alpine", "redis", "bookworm"),
    # sid: the first Debian nginx new enough for `server ... resolve;` (1.27.3+).
    Lookalike("nginxinc/nginx-unprivileged:1.27-alpine", "nginx", "sid"),
)


def docker(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, text=True, **kwargs)


def image_label(tag: str) -> str | None:
    """The look-alike label of a local image, "" for an image without it, None when absent."""
    result = docker(
        "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag,
        check=False, capture_output=True,
    )
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return "" if value in ("", "<no value>") else value


def base_tag(suite: str) -> str:
    return f"tpotserve-test/debian:{suite}"


def ensure_base(suite: str) -> str:
    """A minimal Debian ``suite`` image (debootstrap's minbase), built once and kept."""
    tag = base_tag(suite)
    if image_label(tag) is not None:
        return tag
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    with tempfile.TemporaryDirectory(prefix=f"debootstrap-{suite}-") as work:
        rootfs = Path(work) / "rootfs"
        print(f"debootstrapping Debian {suite} for {tag} ...", flush=True)
        subprocess.run(
            [debootstrap, "--variant=minbase", suite, str(rootfs), MIRROR],
            check=True, stdout=subprocess.DEVNULL,
        )
        # As Docker's official debian images: no package lists or caches in the image.
        for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        docker(
            "import", "--change", f"LABEL {LABEL}=debootstrap-{suite}", "--change", 'CMD ["bash"]',
            "-", tag, stdin=tar.stdout, stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            raise RuntimeError(f"tar of the {suite} root file system failed")
    return tag


def recipe_hash(lookalike: Lookalike) -> str:
    digest = hashlib.sha256(f"{lookalike.suite}\n".encode())
    for path in sorted((RECIPES / lookalike.recipe).rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(RECIPES)} {path.stat().st_mode & 0o111}\n".encode())
            digest.update(path.read_bytes())
    if lookalike.host_ca:
        digest.update(HOST_CA_BUNDLE.read_bytes())
    return digest.hexdigest()[:16]


def ensure(lookalike: Lookalike) -> str:
    """Build ``lookalike`` under its official tag unless that tag already holds it."""
    wanted = recipe_hash(lookalike)
    found = image_label(lookalike.tag)
    if found == wanted:
        return lookalike.tag
    if found == "":
        print(f"{lookalike.tag}: a real image is present; using it", flush=True)
        return lookalike.tag
    base = ensure_base(lookalike.suite)
    with tempfile.TemporaryDirectory(prefix=f"lookalike-{lookalike.recipe}-") as work:
        context = Path(work) / "context"
        shutil.copytree(RECIPES / lookalike.recipe, context)
        if lookalike.host_ca:
            shutil.copy(HOST_CA_BUNDLE, context / "host-ca-certificates.crt")
        print(f"building the look-alike {lookalike.tag} ...", flush=True)
        docker(
            "build", "--quiet", "--build-arg", f"BASE={base}", "--label", f"{LABEL}={wanted}",
            "--tag", lookalike.tag, str(context), stdout=subprocess.DEVNULL,
        )
    return lookalike.tag


def ensure_all() -> list[str]:
    return [ensure(lookalike) for lookalike in LOOKALIKES]


if __name__ == "__main__":
    for built in ensure_all():
        print(built)
    sys.exit(0)
