"""The VM provisioning file (deploy/cloud-init/user-data.yaml), checked offline.

cloud-init's own schema validator judges the file (with a broken copy as the
control that it really validates), the systemd unit it installs is parsed and
verified with systemd-analyze, and the .env writer it carries is run here: what
it writes must satisfy docker-compose.yml (docker-compose v1's `config`).
A missing tool is a failure, never a skip (`make setup-dev` installs them).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.tools import tool

REPO = Path(__file__).resolve().parents[2]
USER_DATA = REPO / "deploy" / "cloud-init" / "user-data.yaml"
COMPOSE_FILE = REPO / "docker-compose.yml"
UNIT_PATH = "/etc/systemd/system/tpotserve.service"
WRITE_ENV_PATH = "/usr/local/sbin/tpotserve-write-env"
OVERRIDE_PATH = "/etc/tpotserve/env.override"
SECRETS = ("API_KEY", "MODEL_SIGNING_KEY")
HEX_KEY = re.compile(r"[0-9a-f]{64}")


def load_yaml(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


@pytest.fixture(scope="module")
def text() -> str:
    assert USER_DATA.is_file(), f"{USER_DATA.relative_to(REPO)} is missing"
    return USER_DATA.read_text()


@pytest.fixture(scope="module")
def config(text: str) -> dict[str, Any]:
    data = load_yaml(text)
    assert isinstance(data, dict), "user-data must be a YAML mapping"
    return data


def written_file(config: dict[str, Any], path: str) -> dict[str, Any]:
    found = [entry for entry in config.get("write_files", []) if entry.get("path") == path]
    assert len(found) == 1, f"write_files must write {path} exactly once"
    return found[0]


def runcmd_script(config: dict[str, Any]) -> str:
    """runcmd as cloud-init runs it: one /bin/sh script, a string item as is, a list shell-quoted."""
    lines = ["#!/bin/sh"]
    for item in config.get("runcmd", []):
        lines.append(item if isinstance(item, str) else shlex.join(str(word) for word in item))
    return "\n".join(lines) + "\n"


def script_variable(script: str, name: str) -> str:
    match = re.search(rf"^\s*{name}=(\S+)\s*$", script, re.MULTILINE)
    assert match, f"runcmd must set {name}"
    return shlex.split(match.group(1))[0]


def clone_dir(config: dict[str, Any]) -> str:
    return script_variable(runcmd_script(config), "TPOTSERVE_DIR")


def parse_unit(content: str) -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(content)
    return unit


def parse_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value in the written .env: {line!r}"
            values[name] = value
    return values


def compose_required_variables() -> set[str]:
    """Every `${VAR:?...}` / `${VAR?...}` of docker-compose.yml: compose refuses to start without it."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", COMPOSE_FILE.read_text()))


# --- cloud-init's own validator --------------------------------------------------
def cloud_init_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("cloud-init"), "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_first_line_is_cloud_config(text: str) -> None:
    # Plain #cloud-config: cloud-init 22.4's schema command refuses a `## template: jinja` header.
    assert text.splitlines()[0] == "#cloud-config", "user-data must start with the line #cloud-config"


def test_cloud_init_schema_accepts_the_file() -> None:
    result = cloud_init_schema(USER_DATA)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Valid cloud-config" in output, (
        f"cloud-init schema rejects {USER_DATA.relative_to(REPO)} (rc={result.returncode}):\n{output}"
    )


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        pytest.param({}, True, id="unchanged"),
        pytest.param({"packages": 42}, False, id="packages-not-a-list"),
        pytest.param({"write_files": [{"content": "no path"}]}, False, id="write_files-without-path"),
    ],
)
def test_cloud_init_schema_tells_valid_from_broken(tmp_path: Path, config, change, valid: bool) -> None:
    """The control: the same file re-serialized passes, a broken copy fails, so the check above means something."""
    copy = tmp_path / "user-data.yaml"
    with copy.open("w") as out:
        out.write("#cloud-config\n")
        YAML(typ="safe", pure=True).dump({**config, **change}, out)
    result = cloud_init_schema(copy)
    output = result.stdout + result.stderr
    if valid:
        assert result.returncode == 0 and "Valid cloud-config" in output, output
    else:
        assert result.returncode != 0 and "Valid cloud-config" not in output, (
            f"cloud-init schema accepted a broken copy ({change}):\n{output}"
        )
        assert next(iter(change)) in output, f"the error should name {next(iter(change))}:\n{output}"


def cloud_init_module_keys() -> set[str]:
    """The top-level keys cloud-init's modules read, from its own schema (via its own interpreter)."""
    cloud_init = tool("cloud-init")
    shebang = Path(cloud_init).read_text().splitlines()[0]
    assert shebang.startswith("#!"), f"{cloud_init} is not a script: {shebang!r}"
    code = (
        "from cloudinit.config.schema import get_schema\n"
        "for name, spec in get_schema()['$defs'].items():\n"
        "    if name.startswith('cc_'):\n"
        "        print(*spec.get('properties', {}), sep='\\n')\n"
    )
    result = subprocess.run([*shebang[2:].split(), "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_every_top_level_key_is_a_cloud_init_module_key(config) -> None:
    # The schema allows unknown top-level keys, so a misspelt module (`packges:`)
    # would pass `cloud-init schema` and be ignored on the VM.
    known = cloud_init_module_keys()
    assert {"packages", "write_files", "runcmd"} <= known and "packges" not in known, sorted(known)
    unknown = sorted(set(config) - known)
    assert not unknown, f"cloud-init has no module reading {unknown} (a typo?)"


# --- what it installs and runs -----------------------------------------------------
def test_packages_come_from_the_distribution(config) -> None:
    assert config.get("package_update") is True, "package_update: true (fresh package lists first)"
    packages = config.get("packages") or []
    assert all(isinstance(p, str) for p in packages), "plain package names from the distribution"
    for needed in ["docker.io", "docker-compose-v2", "docker-buildx", "git", "openssl", "certbot"]:
        assert needed in packages, f"packages must include {needed}"
    assert "apt" not in config and "snap" not in config, "no third-party repositories or snaps"


def test_runcmd_clones_the_given_version_then_starts_the_unit(config) -> None:
    script = runcmd_script(config)
    assert script.splitlines()[1].strip() == "set -eu", "runcmd must start with `set -eu`: stop at the first failure"
    assert "YOUR-ORG" in script_variable(script, "REPO_URL"), "REPO_URL stays a placeholder in the repo"
    assert script_variable(script, "TPOTSERVE_VERSION"), "TPOTSERVE_VERSION must name a version"
    assert 'git clone --branch "$TPOTSERVE_VERSION" --depth 1 "$REPO_URL" "$TPOTSERVE_DIR"' in script
    assert clone_dir(config) == "/opt/tpotserve"
    assert f'{WRITE_ENV_PATH} "$TPOTSERVE_DIR/.env"' in script, "runcmd must write the .env in the clone"
    steps = [line.strip() for line in script.splitlines()]
    assert "systemctl daemon-reload" in steps and "systemctl enable --now tpotserve.service" in steps
    assert steps.index("systemctl daemon-reload") < steps.index("systemctl enable --now tpotserve.service")
    assert steps.index("systemctl enable --now tpotserve.service") == len(steps) - 1, "start the stack last"


@pytest.mark.parametrize("which", ["runcmd", "write-env"])
def test_shell_scripts_parse(tmp_path: Path, config, which: str) -> None:
    script = runcmd_script(config) if which == "runcmd" else written_file(config, WRITE_ENV_PATH)["content"]
    path = tmp_path / "script.sh"
    path.write_text(script)
    result = subprocess.run([tool("sh"), "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{which}: sh -n says:\n{result.stderr}"


def test_the_unit_runs_compose_in_the_clone(config) -> None:
    entry = written_file(config, UNIT_PATH)
    assert entry.get("permissions") == "0644" and entry.get("owner") == "root:root"
    unit = parse_unit(entry["content"])
    service = unit["Service"]
    assert service["Type"] == "oneshot" and service["RemainAfterExit"] == "yes"
    assert service["WorkingDirectory"] == clone_dir(config), "WorkingDirectory must be the clone (compose reads .env there)"
    assert service["ExecStart"].startswith("/usr/bin/docker compose up -d "), service["ExecStart"]
    assert service["ExecStop"] == "/usr/bin/docker compose down"
    assert int(service["TimeoutStartSec"]) >= 900, "the first start builds the images and trains a model"
    assert "docker.service" in unit["Unit"]["Requires"].split()
    assert {"docker.service", "network-online.target"} <= set(unit["Unit"]["After"].split())
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _verify_unit(tmp_path: Path, content: str) -> subprocess.CompletedProcess[str]:
    # Offline: Docker need not be installed here, so a stub stands in for the
    # docker binary and for docker.service (the unit's directory is searched first).
    stub = tmp_path / "docker"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    (tmp_path / "docker.service").write_text("[Unit]\nDescription=stub\n[Service]\nExecStart=/bin/true\n")
    unit = tmp_path / "tpotserve.service"
    unit.write_text(content.replace("/usr/bin/docker ", f"{stub} "))
    return subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verifies_the_unit(tmp_path: Path, config) -> None:
    result = _verify_unit(tmp_path, written_file(config, UNIT_PATH)["content"])
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"systemd-analyze verify (rc={result.returncode}):\n{output}"


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path, config) -> None:
    """The control: systemd only warns about an unknown value, so the check above must read the output."""
    broken = written_file(config, UNIT_PATH)["content"].replace("Type=oneshot", "Type=one-shot")
    result = _verify_unit(tmp_path, broken)
    assert "one-shot" in result.stdout + result.stderr, result.stdout + result.stderr


# --- the .env it writes ---------------------------------------------------------------
@pytest.fixture
def write_env(tmp_path: Path, config):
    script = tmp_path / "tpotserve-write-env"
    script.write_text(written_file(config, WRITE_ENV_PATH)["content"])
    script.chmod(0o755)

    def run(env_file: Path, override: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "TPOTSERVE_ENV_OVERRIDE": str(override or tmp_path / "no-override")}
        result = subprocess.run([str(script), str(env_file)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"tpotserve-write-env failed:\n{result.stdout}{result.stderr}"
        return result

    return run


def test_env_has_fresh_keys_and_is_root_only(tmp_path: Path, write_env) -> None:
    env_file = tmp_path / ".env"
    write_env(env_file)
    mode = stat.S_IMODE(env_file.stat().st_mode)
    assert mode == 0o600, f".env must be readable by its owner only, got {oct(mode)}"
    assert env_file.stat().st_uid == os.getuid()
    values = parse_env(env_file)
    for name in SECRETS:
        assert HEX_KEY.fullmatch(values[name]), f"{name} must be 32 random bytes in hex, got {values[name]!r}"
    assert values["API_KEY"] != values["MODEL_SIGNING_KEY"], "two keys, two values"
    assert values["GATEWAY_PORT"] == "80" and values["GATEWAY_TLS_PORT"] == "443"
    assert values["TLS_CERT_FILE"] == "" and values["TLS_KEY_FILE"] == "", "TLS stays off until docs/deploy.md"
    assert "docs/deploy.md" in env_file.read_text(), "the .env must point to docs/deploy.md for TLS"
    assert not list(tmp_path.glob(".env.tmp.*")), "no temporary file left behind"


def test_env_keys_differ_between_machines(tmp_path: Path, write_env) -> None:
    write_env(tmp_path / "a.env")
    write_env(tmp_path / "b.env")
    a, b = parse_env(tmp_path / "a.env"), parse_env(tmp_path / "b.env")
    assert all(a[name] != b[name] for name in SECRETS), "keys must be generated, never fixed in the file"


def test_env_is_written_only_once(tmp_path: Path, write_env) -> None:
    env_file = tmp_path / ".env"
    write_env(env_file)
    before = env_file.read_text()
    write_env(env_file)
    assert env_file.read_text() == before, "an existing .env (its keys) must never be replaced"


def test_env_takes_the_users_values_from_the_override_file(tmp_path: Path, write_env, config) -> None:
    override = tmp_path / "env.override"
    override.write_text(
        written_file(config, OVERRIDE_PATH)["content"]
        + "MODEL_SIGNING_KEY=shared-with-the-other-vms\nAPI_KEY=\nTPOT_MAX_TIME_MINS=5\n"
    )
    env_file = tmp_path / ".env"
    write_env(env_file, override)
    values = parse_env(env_file)
    assert values["MODEL_SIGNING_KEY"] == "shared-with-the-other-vms"
    assert HEX_KEY.fullmatch(values["API_KEY"]), "an empty override still gets a generated key"
    assert values["TPOT_MAX_TIME_MINS"] == "5", "other settings pass through to .env"
    assert list(values).count("MODEL_SIGNING_KEY") == 1


def test_env_satisfies_every_variable_compose_requires(tmp_path: Path, write_env) -> None:
    required = compose_required_variables()
    assert {"API_KEY", "MODEL_SIGNING_KEY"} <= required, f"parsed {required} from docker-compose.yml"
    env_file = tmp_path / ".env"
    write_env(env_file)
    values = parse_env(env_file)
    missing = sorted(name for name in required if not values.get(name))
    assert not missing, f"docker-compose.yml requires {missing}; the provisioning .env does not set them"


def test_docker_compose_accepts_the_written_env(tmp_path: Path, write_env) -> None:
    env_file = tmp_path / ".env"
    write_env(env_file)
    result = subprocess.run(
        [tool("docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        # Only the written .env: nothing from this shell can fill a gap.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config with the written .env:\n{result.stderr}"
    nginx = load_yaml(result.stdout)["services"]["nginx"]
    published = {str(port.get("published")) if isinstance(port, dict) else str(port).split(":")[0]
                 for port in nginx.get("ports", [])}
    assert "80" in published, f"nginx must be published on GATEWAY_PORT=80, got {nginx.get('ports')}"


def test_every_name_the_env_sets_is_one_compose_reads(tmp_path: Path, write_env) -> None:
    """A name compose never reads would be a setting that silently does nothing."""
    read = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    env_file = tmp_path / ".env"
    write_env(env_file)
    unread = sorted(set(parse_env(env_file)) - read)
    assert not unread, f"the provisioning .env sets {unread}, which docker-compose.yml never reads"


# --- nothing secret in the repo ---------------------------------------------------------
def test_no_secret_is_committed(text: str, config) -> None:
    long_random = re.findall(r"\b[0-9a-fA-F]{32,}\b|\b[A-Za-z0-9+/]{40,}={0,2}", text)
    assert not long_random, f"secret-looking literals in user-data: {long_random}"
    for line in written_file(config, OVERRIDE_PATH)["content"].splitlines():
        assert not line.strip() or line.lstrip().startswith("#"), (
            f"the override file ships commented placeholders only, got {line!r}"
        )
    literal = re.findall(rf"^\s*(?:{'|'.join(SECRETS)}|PREDICT_API_KEY)=([^$\s].*)$", text, re.MULTILINE)
    assert not literal, f"a key is set to a literal value in user-data: {literal}"
    assert written_file(config, OVERRIDE_PATH).get("permissions") == "0600"
    assert written_file(config, WRITE_ENV_PATH)["content"].count("openssl rand -hex 32") == 2
