"""The container files, checked offline (no Docker engine here).

docker-compose.yml and the Dockerfiles must agree with the tools that judge
them (the Compose Specification schema, docker-compose v1's `config`,
hadolint) and with the native run: the commands in native/services.py, the
nginx templates native/nginx_conf.py renders, and the variable names tpotserve.settings reads.
A missing tool is a failure, never a skip.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from native import nginx_conf
from native.services import REDIS_COMMAND, SERVICE_COMMANDS
from tpotserve.settings import Settings

from tests.tools import tool

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = REPO / "tests" / "schemas" / "compose-spec.json"
PYTHON_DOCKERFILE = REPO / "services" / "Dockerfile"
# Each Dockerfile, for what holds of a file as a whole (hadolint, its COPY sources).
DOCKERFILES = {
    "services": PYTHON_DOCKERFILE,
    "nginx": REPO / "nginx" / "Dockerfile",
}
# Each image: the Dockerfile and the stage it is built to (compose's build.target; None: the last).
IMAGES = {
    "api": (PYTHON_DOCKERFILE, "api"),
    "trainer": (PYTHON_DOCKERFILE, "trainer"),
    "nginx": (DOCKERFILES["nginx"], None),
}
# The only variable compose requires; everything else has a default.
TEST_ENV = {"API_KEY": "x", "MODEL_SIGNING_KEY": "y"}
PYTHON_SERVICES = sorted(SERVICE_COMMANDS)  # api, worker, worker-control
ALL_SERVICES = sorted({*SERVICE_COMMANDS, "redis", "nginx"})
# Image-level variables a Dockerfile may set that are not application settings.
# Variables for the interpreter and libraries, not for our Settings.
IMAGE_ENV = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_DISABLE_PIP_VERSION_CHECK", "MPLCONFIGDIR"}
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}


# --- Dockerfile parsing ------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            tokens = shlex.split(instruction.args)
            if tokens and "=" not in tokens[0]:  # legacy `ENV NAME value`
                values[tokens[0]] = " ".join(tokens[1:])
            else:
                values.update(token.split("=", 1) for token in tokens)
        return values

    def exposed_ports(self) -> set[int]:
        return {int(p.split("/")[0]) for i in self.all("EXPOSE") for p in i.args.split()}


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, continuation lines joined."""
    stages: list[Stage] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if not pending:
            start = number
        if text.endswith("\\"):
            pending.append(text[:-1].strip())
            continue
        pending.append(text)
        keyword, _, args = " ".join(pending).partition(" ")
        pending = []
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        else:
            assert stages, f"{path}:{start}: {instruction.keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    assert stages, f"{path} has no FROM"
    return stages


def exec_form(path: Path, instruction: Instruction | None) -> list[str]:
    """ENTRYPOINT/CMD as a list; shell form would wrap the command in `/bin/sh -c`."""
    if instruction is None:
        return []
    try:
        value = json.loads(instruction.args)
    except json.JSONDecodeError:
        value = None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
        f"{path.relative_to(REPO)}:{instruction.line}: {instruction.keyword} must use the exec (JSON) "
        f"form so it equals native/services.py's command, got {instruction.args!r}"
    )
    return value


@dataclass
class Copy:
    sources: list[str]
    dest: str
    from_stage: str | None
    line: int
    flags: dict[str, str] = field(default_factory=dict)


def copies(stage: Stage) -> list[Copy]:
    result = []
    for instruction in stage.all("COPY") + stage.all("ADD"):
        args = instruction.args
        tokens = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = {}
        while tokens and tokens[0].startswith("--"):
            key, _, value = tokens.pop(0)[2:].partition("=")
            flags[key] = value
        if tokens and tokens[0].startswith("["):  # flags followed by the JSON form
            tokens = json.loads(" ".join(tokens))
        assert len(tokens) >= 2, f"line {instruction.line}: {instruction.keyword} needs a source and a dest"
        result.append(Copy(tokens[:-1], tokens[-1], flags.get("from"), instruction.line, flags))
    return result


def context_copies(stage: Stage) -> list[Copy]:
    """COPY/ADD from the build context (not `--from=` another stage or image)."""
    return [c for c in copies(stage) if c.from_stage is None]


def dockerfile(name: str) -> list[Stage]:
    path = DOCKERFILES[name]
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    return parse_dockerfile(path)


def lineage(stages: list[Stage], target: str | None) -> list[Stage]:
    """Stage ``target`` (None: the last) and the stages of the same file it is built FROM, in build order."""
    by_name = {stage.name: stage for stage in stages if stage.name}
    assert target is None or target in by_name, f"no stage {target!r} (stages: {sorted(by_name)})"
    chain = [by_name[target] if target else stages[-1]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def built(stages: list[Stage], target: str | None) -> Stage:
    """What stage ``target`` builds, as one stage: on the base image its lineage starts from, with
    every instruction of that lineage in order (an ENV, USER or WORKDIR of a parent stage holds)."""
    chain = lineage(stages, target)
    return Stage(chain[0].base, chain[-1].name, [i for stage in chain for i in stage.instructions])


def image(name: str) -> Stage:
    """The final stage of image ``name`` (api, trainer, nginx), its parent stages folded in."""
    path, target = IMAGES[name]
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    return built(parse_dockerfile(path), target)


# --- compose loading and interpolation ----------------------------------------
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?message}` (and `-`/`?`) on every string value."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg, current = match["op"], match["arg"] or "", env.get(name)
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise MissingVariable(f"{name}: {arg}")
        if op == ":-" and not current:
            return arg
        if op == "-" and current is None:
            return arg
        return current or ""

    result = _VARIABLE.sub(substitute, value)
    assert "${" not in result, f"unsupported interpolation left in {value!r}"
    return result


def referenced_variables(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(referenced_variables(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(referenced_variables(v) for v in value))
    if isinstance(value, str):
        return {m["braced"] or m["named"] for m in _VARIABLE.finditer(value) if not m["escaped"]}
    return set()


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml is missing at the repo root"
    # Safe loading resolves anchors and `<<` merge keys, as compose does.
    return YAML(typ="safe", pure=True).load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw_compose, TEST_ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            options = parts[2].split(",") if len(parts) > 2 else []
            result.append(Mount(parts[0], parts[1], "ro" in options))
        else:
            result.append(Mount(volume.get("source", ""), volume["target"], bool(volume.get("read_only"))))
    return result


def published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(published, target) of each `ports:` entry."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.append((str(port.get("published", "")), int(port["target"])))
        else:
            *_, published, target = str(port).rsplit(":", 2) if ":" in str(port) else ("", str(port))
            result.append((published, int(target.split("/")[0])))
    return result


def service_image(name: str, service: dict[str, Any]) -> tuple[Path, str | None]:
    """The Dockerfile a service builds from and its build target."""
    build = service.get("build")
    assert isinstance(build, dict), f"{name}: build from a Dockerfile (build: context + dockerfile)"
    context = (REPO / build.get("context", ".")).resolve()
    assert context == REPO, (
        f"service {name!r} builds with context {build.get('context')!r}: the Dockerfiles' COPY paths "
        "are relative to the repo root"
    )
    return REPO / build.get("dockerfile", "Dockerfile"), build.get("target")


# --- the compose file against its tools ----------------------------------------
def test_compose_validates_against_the_compose_specification(raw_compose, compose) -> None:
    assert "version" not in raw_compose, "drop the obsolete top-level `version:` (Compose Specification)"
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors
    )


def _docker_compose(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"  # so a developer's own .env cannot hide a problem
    empty_env_file.write_text("")
    return subprocess.run(
        [tool("docker-compose"), "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    result = _docker_compose(tmp_path, TEST_ENV)
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("secret", ["API_KEY", "MODEL_SIGNING_KEY"])
def test_docker_compose_refuses_to_start_without_a_secret(tmp_path: Path, secret: str) -> None:
    env = {name: value for name, value in TEST_ENV.items() if name != secret}
    result = _docker_compose(tmp_path, env)
    assert result.returncode != 0 and secret in result.stderr, (
        f"compose must require {secret} (${{{secret}:?...}}) rather than start without it; "
        f"docker-compose config said rc={result.returncode}:\n{result.stderr}"
    )


# --- the Dockerfiles against their tools -----------------------------------------
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name: str) -> None:
    path = DOCKERFILES[name]
    # From the repo root, so a .hadolint.yaml there would apply.
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(path.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (
        f"hadolint found problems in {path.relative_to(REPO)}:\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_hadolint_ignore_says_why(name: str) -> None:
    lines = DOCKERFILES[name].read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            previous = lines[index - 1].strip() if index else ""
            assert previous.startswith("#") and "hadolint" not in previous, (
                f"{DOCKERFILES[name].relative_to(REPO)}:{index + 1}: put a comment saying why "
                "on the line above each `# hadolint ignore=`"
            )


# --- what the images contain ------------------------------------------------------
def _dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing: the builder would get the whole repo (.venv, .git...)"
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(rel_path: str, patterns: list[str]) -> bool:
    """Docker's rules, simplified: root-relative patterns, a matched directory takes its
    contents with it, a later `!pattern` takes a path back."""
    parts = PurePosixPath(rel_path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _tracked_files(rel_dir: str) -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "-z", "--", rel_dir], cwd=REPO, capture_output=True, text=True, check=True
    )
    return [f for f in result.stdout.split("\0") if f]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_copy_source_is_in_the_build_context(name: str) -> None:
    patterns = _dockerignore_patterns()
    for stage in dockerfile(name):
        for copy in context_copies(stage):
            for source in copy.sources:
                where = f"{DOCKERFILES[name].relative_to(REPO)}:{copy.line}"
                is_glob = any(c in source for c in "*?[")
                matches = sorted(REPO.glob(source.strip("/"))) if is_glob else [REPO / source]
                assert matches and all(m.exists() for m in matches), (
                    f"{where}: COPY source {source!r} is not in the repo"
                )
                for match in matches:
                    rel = match.relative_to(REPO).as_posix()
                    files = _tracked_files(rel) if match.is_dir() else [rel]
                    hidden = [f for f in [rel, *files] if dockerignored(f, patterns)]
                    assert not hidden, (
                        f"{where}: .dockerignore excludes what COPY {source!r} needs: {hidden[:5]}"
                    )


OWN_PACKAGES = {"tpotserve", "tpotserve-api", "tpotserve-trainer"}


def uninstallable_lock_lines(text: str) -> list[str]:
    """Lines of a lock that `pip install -r` cannot take from PyPI before our packages exist."""
    bad = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        name = re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0].lower().replace("_", "-")
        local = line.startswith("-e") or "file:" in line or " @ " in line
        if local or "==" not in line or name in OWN_PACKAGES:
            bad.append(line)
    return bad


def test_the_lock_installs_without_the_repo() -> None:
    """The builder installs requirements.lock first, then our packages with --no-deps."""
    bad = uninstallable_lock_lines((REPO / "requirements.lock").read_text())
    assert not bad, f"requirements.lock lines a container build cannot install from PyPI: {bad}"


def _pins(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.lower().split("==", 1) for line in lines if line and not line.startswith("#"))


def test_the_locks_are_cpu_only_and_installed_whole() -> None:
    """No GPU build in the images or the venv: xgboost-cpu (upstream's CPU-only build, the same
    `xgboost` module) at the version tpot's `xgboost` would have, and no NVIDIA wheel. The locks
    are complete, so every install takes them with --no-deps and nothing pulls the CUDA build in."""
    runtime, dev = _pins(REPO / "requirements.lock"), _pins(REPO / "requirements-dev.lock")
    for pins in (runtime, dev):
        assert not [name for name in pins if name.startswith("nvidia-")], pins
        assert "xgboost" not in pins
    assert "xgboost-cpu" in runtime and not set(runtime) & set(dev)
    installs = re.findall(r"pip install [^\n]*-r requirements\.lock", PYTHON_DOCKERFILE.read_text())
    assert installs and all("--no-deps" in line for line in installs), installs
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert re.search(r'pip install .*--no-deps "\$\{reqs\[@\]\}"', setup), "setup.sh installs the locks whole"


def test_the_venv_runs_the_cpu_build_and_pip_check_names_only_that() -> None:
    import xgboost  # heavy: only here

    assert xgboost.__version__ == metadata.version("xgboost-cpu")
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("xgboost")
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    complaints = [line for line in check.stdout.splitlines() if line.strip()]
    assert complaints == [f"tpot {metadata.version('tpot')} requires xgboost, which is not installed."], check.stdout


def test_the_lock_covers_every_python_3_11_the_images_may_have() -> None:
    """Installed with --no-deps, the lock must itself pin what a dependency needs only on some
    Pythons: the images' Debian bookworm has 3.11.2, where redis needs async-timeout (not on the
    3.11.7 the lock is made on). Every such requirement of an installed package is pinned."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    pinned = {name.replace("_", "-") for name in _pins(REPO / "requirements.lock")} | {
        name.replace("_", "-") for name in _pins(REPO / "requirements-dev.lock")}
    missing = []
    for dist in metadata.distributions():
        if dist.metadata["Name"].lower().replace("_", "-") == "tpot":
            continue  # its xgboost is xgboost-cpu on purpose
        for raw in dist.requires or []:
            requirement = Requirement(raw)
            if requirement.marker is None or "extra" in str(requirement.marker):
                continue
            for patch in range(0, 15):
                environment = {**default_environment(), "python_full_version": f"3.11.{patch}", "python_version": "3.11"}
                if requirement.marker.evaluate(environment):
                    if requirement.name.lower().replace("_", "-") not in pinned:
                        missing.append(f"{dist.metadata['Name']}: {raw}")
                    break
    assert not missing, f"the locks install with --no-deps but lack: {missing}"


def test_every_install_runs_pip_check() -> None:
    dockerfile, setup = PYTHON_DOCKERFILE.read_text(), (REPO / "scripts" / "setup.sh").read_text()
    assert "&& sh pip-check.sh" in dockerfile and "scripts/pip-check.sh" in setup
    run = subprocess.run(["sh", str(REPO / "scripts" / "pip-check.sh")], env={**os.environ, "PYTHON": sys.executable},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("name", ["api", "trainer"])
def test_python_images_are_multi_stage_on_one_base(name: str) -> None:
    path, target = IMAGES[name]
    stages = parse_dockerfile(path)
    final = image(name)
    venvs = [c for c in copies(final) if c.sources == ["/opt/venv"] and c.dest.rstrip("/") == "/opt/venv"]
    assert venvs and venvs[-1].from_stage, (
        f"{name}: build in a builder stage and COPY --from=<it> /opt/venv /opt/venv into a clean final stage"
    )
    source = venvs[-1].from_stage
    assert source in {s.name for s in stages}, f"{name}: COPY --from={source} names no stage of {path.name}"
    assert source not in {s.name for s in lineage(stages, target)}, (
        f"{name}: the final stage is built from {source}: copy /opt/venv into a clean stage instead"
    )
    builder = built(stages, source)
    assert builder.base == final.base, (
        f"{name}: builder ({builder.base}) and final ({final.base}) stages must share the base image: "
        "the venv's python links to the builder's interpreter"
    )
    path = final.env().get("PATH", "")
    assert path.startswith("/opt/venv/bin:"), f"{name}: put /opt/venv/bin first on PATH, got {path!r}"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_final_stage_runs_as_non_root(name: str) -> None:
    user = image(name).last("USER")
    assert user is not None, f"{name}: the final stage needs a USER (non-root)"
    uid = user.args.split(":")[0]
    assert uid not in ("root", "0"), f"{name}: the final stage runs as {user.args!r}; use a non-root user"


def test_api_and_trainer_run_as_the_same_user() -> None:
    api, trainer = (image(n).last("USER") for n in ("api", "trainer"))
    assert api and trainer and api.args == trainer.args, (
        "the API must read what the trainer writes on the model volume: give both images the same USER "
        f"(api {api and api.args!r}, trainer {trainer and trainer.args!r})"
    )


# --- the same commands as the native run --------------------------------------------
def test_compose_has_exactly_the_stack_services(services) -> None:
    # Optional services (dashboard, monitoring, dask) live behind profiles.
    core = sorted(name for name, config in services.items() if not config.get("profiles"))
    assert core == ALL_SERVICES, (
        f"compose services without a profile {core} != native/services.py's {ALL_SERVICES}"
    )


def _image_command(name: str) -> tuple[list[str], list[str]]:
    final = image(name)
    path = IMAGES[name][0]
    return exec_form(path, final.last("ENTRYPOINT")), exec_form(path, final.last("CMD"))


@pytest.mark.parametrize("service", PYTHON_SERVICES)
def test_service_command_matches_the_native_run(services, service: str) -> None:
    config = services[service]
    names = [n for n, spec in IMAGES.items() if spec == service_image(service, config)]
    assert names, f"{service}: builds none of IMAGES (see test_every_service_builds_one_of_the_images)"
    entrypoint, cmd = _image_command(names[0])
    if "entrypoint" in config:
        entrypoint = config["entrypoint"]
    command = config.get("command", cmd)
    assert isinstance(command, list), f"{service}: write `command:` as a list, got {command!r}"
    assert entrypoint + command == SERVICE_COMMANDS[service], (
        f"{service}: ENTRYPOINT {entrypoint} + command {command} in the container, "
        f"but native/services.py runs "
        f"{SERVICE_COMMANDS[service]}"
    )


def test_every_service_builds_one_of_the_images(services) -> None:
    """A shared Dockerfile without build.target would build its last stage: the wrong image, silently."""
    for service, config in services.items():
        if "build" in config:
            path, target = service_image(service, config)
            assert (path, target) in IMAGES.values(), (
                f"{service}: builds {path.relative_to(REPO)} to stage {target!r}, none of the images "
                + ", ".join(f"{n} ({p.relative_to(REPO)}, target {t!r})" for n, (p, t) in IMAGES.items())
            )


@pytest.mark.parametrize(("name", "service"), [("api", "api"), ("trainer", "worker")])
def test_image_default_command_matches_the_native_run(name: str, service: str) -> None:
    entrypoint, cmd = _image_command(name)
    assert entrypoint + cmd == SERVICE_COMMANDS[service], (
        f"`docker run` of the {name} image runs {entrypoint + cmd}, native/services.py runs "
        f"{SERVICE_COMMANDS[service]}"
    )


@pytest.mark.parametrize("name", ["api", "trainer"])
def test_entrypoint_script_sits_at_its_repo_path(name: str) -> None:
    final = image(name)
    script = exec_form(IMAGES[name][0], final.last("ENTRYPOINT"))[0]
    workdir = final.last("WORKDIR")
    assert workdir is not None, f"{name}: set WORKDIR so the relative ENTRYPOINT {script!r} resolves"
    wanted = PurePosixPath(workdir.args) / script
    copied = []
    for c in context_copies(final):
        dest = PurePosixPath(workdir.args) / c.dest  # an absolute dest replaces the WORKDIR
        if c.sources == [script] and wanted in (dest, dest / PurePosixPath(script).name):
            copied.append(c)
    assert copied, f"{name}: COPY {script} to {wanted} (the same path relative to WORKDIR as in the repo)"
    assert os.access(REPO / script, os.X_OK), f"{script} must be executable (chmod +x; git keeps the mode)"


def test_redis_runs_the_native_command(services) -> None:
    redis = services["redis"]
    assert str(redis.get("image", "")).startswith("redis:"), "redis: use the official redis image"
    assert redis.get("command") == REDIS_COMMAND, (
        f"redis: compose runs {redis.get('command')}, native/services.py runs {REDIS_COMMAND}"
    )


# --- nginx: the same template, the same variables, the same ports ----------------------
def test_nginx_image_renders_the_native_template() -> None:
    final = image("nginx")
    template = PurePosixPath(nginx_conf.NGINX_TEMPLATE)
    assert template.name == "default.conf.template", (
        "the image renders X.template to conf.d/X; only default.conf.template replaces the image's own "
        "default.conf (a second server on the same port)"
    )
    rendered_at = set()
    for copy in context_copies(final):
        for source in copy.sources:
            src = PurePosixPath(source.rstrip("/"))
            if src == template:
                into_dir = copy.dest.endswith("/")
                rendered_at.add(str(PurePosixPath(copy.dest) / template.name) if into_dir else copy.dest)
            elif src in template.parents:
                rendered_at.add(str(PurePosixPath(copy.dest) / template.relative_to(src)))
    assert f"/etc/nginx/templates/{template.name}" in rendered_at, (
        f"nginx/Dockerfile must COPY {nginx_conf.NGINX_TEMPLATE} to /etc/nginx/templates/ "
        f"(it puts it at {sorted(rendered_at) or 'nowhere'})"
    )


def _nginx_templates() -> list[Path]:
    return sorted((REPO / nginx_conf.NGINX_TEMPLATE_DIR).rglob("*.template"))


def test_nginx_image_copies_every_template_with_its_subdirectory() -> None:
    """The image renders templates/<sub>/x.template to conf.d/<sub>/x; the includes name those paths."""
    final = image("nginx")
    copies = {
        (PurePosixPath(source.rstrip("/")), copy.dest.rstrip("/"))
        for copy in context_copies(final)
        for source in copy.sources
    }
    assert (PurePosixPath(nginx_conf.NGINX_TEMPLATE_DIR), "/etc/nginx/templates") in copies, (
        f"nginx/Dockerfile must COPY {nginx_conf.NGINX_TEMPLATE_DIR}/ to /etc/nginx/templates/ whole"
    )
    templates = REPO / nginx_conf.NGINX_TEMPLATE_DIR
    rendered = {str(t.relative_to(templates).with_suffix("")) for t in _nginx_templates()}
    included = set()
    for template in _nginx_templates():
        for target in re.findall(r"include \$\{NGINX_CONF_DIR\}/([^;]+);", template.read_text()):
            included.update({target.replace("${GATEWAY_TLS}", mode) for mode in ("on", "off")})
    assert included and included <= rendered, f"includes without a template: {sorted(included - rendered)}"


def test_nginx_image_sources_the_tls_script_the_native_run_sources() -> None:
    final = image("nginx")
    script = PurePosixPath(nginx_conf.NGINX_TLS_SCRIPT)
    placed = [
        copy for copy in context_copies(final) for source in copy.sources if PurePosixPath(source) == script
    ]
    assert placed, f"nginx/Dockerfile must COPY {script} into /docker-entrypoint.d/"
    assert all(c.dest.rstrip("/") == "/docker-entrypoint.d" for c in placed)
    # The entrypoint sources *.envsh only when executable, and skips it silently otherwise.
    assert all(c.flags.get("chmod") == "0755" for c in placed), "COPY --chmod=0755 (git modes are not kept)"
    assert script.suffix == ".envsh", "only *.envsh files are sourced (and so can export GATEWAY_TLS)"
    # Sorted before the image's 20-envsubst-on-templates.sh, which renders the templates.
    assert script.name < "20-envsubst-on-templates.sh"


def test_nginx_template_variables_are_all_set(services) -> None:
    """The image's envsubst only replaces variables that are set; any other `${X}` reaches nginx as is."""
    placeholders = {
        name
        for template in _nginx_templates()
        for name in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", template.read_text())
    }
    script = (REPO / nginx_conf.NGINX_TLS_SCRIPT).read_text()
    exported = set(re.findall(r"export ([A-Z_][A-Z0-9_]*)=", script))
    defined = set(image("nginx").env()) | set(environment(services["nginx"])) | exported
    assert placeholders <= defined, f"nginx: set {sorted(placeholders - defined)} (ENV in nginx/Dockerfile)"


def test_ports_agree_across_images_and_compose(services) -> None:
    nginx = image("nginx")
    nginx_env = {**nginx.env(), **environment(services["nginx"])}
    api_env = {**image("api").env(), **environment(services["api"])}

    # "server api:8000 resolve;" -> api, 8000
    upstream = nginx_env["API_SERVERS"].split()[1].rstrip(";")
    upstream_host, _, upstream_port = upstream.rpartition(":")
    api_port = int(api_env["API_BIND"].rpartition(":")[2])
    assert upstream_host == "api" and int(upstream_port) == api_port, (
        f"nginx proxies to {upstream}, but the api service listens on {api_env['API_BIND']}"
    )
    assert api_env["API_BIND"].startswith("0.0.0.0:"), "the API must bind 0.0.0.0 in its container"
    assert api_port in image("api").exposed_ports(), f"api: EXPOSE {api_port}"
    health = " ".join(services["api"]["healthcheck"]["test"])
    assert f":{api_port}/" in health, f"api: healthcheck port {api_port} (API_BIND), not: {health}"

    listen = int(nginx_env["NGINX_LISTEN"].rpartition(":")[2])
    tls_listen = int(nginx_env["NGINX_TLS_LISTEN"].rpartition(":")[2])
    for port in (listen, tls_listen):
        assert port in nginx.exposed_ports(), f"nginx: EXPOSE {port}"
    assert [target for _, target in published_ports(services["nginx"])] == [listen, tls_listen], (
        f"nginx must publish exactly its ports {listen} (HTTP) and {tls_listen} (HTTPS), "
        f"got {services['nginx'].get('ports')}"
    )
    # The redirect names the HTTPS port clients reach: the host side of the mapping.
    (tls_host,) = [h for h, t in published_ports(services["nginx"]) if t == tls_listen]
    assert str(tls_host) == str(environment(services["nginx"])["GATEWAY_TLS_PORT"]), (
        "nginx's GATEWAY_TLS_PORT (the redirect target) must be the published HTTPS port"
    )


def test_only_the_gateway_publishes_a_port(services) -> None:
    publishing = sorted(name for name, config in services.items() if config.get("ports"))
    assert publishing == ["nginx"], f"only nginx may publish ports (`expose:` the others): {publishing}"


# --- volumes, health and start order ------------------------------------------------------
def test_model_volume_is_writable_for_the_workers_only(compose, services) -> None:
    assert "models" in (compose.get("volumes") or {}), "declare the named volume `models`"
    for service in PYTHON_SERVICES:
        model_dir = environment(services[service]).get("MODEL_DIR")
        found = [m for m in mounts(services[service]) if m.source == "models"]
        assert len(found) == 1, f"{service}: mount `models` once, got {services[service].get('volumes')}"
        assert found[0].target == model_dir, (
            f"{service}: models is mounted at {found[0].target}, but MODEL_DIR={model_dir}"
        )
        want_read_only = service in ("api", "scheduler")  # the scheduler only enqueues
        assert found[0].read_only == want_read_only, (
            f"{service}: the models volume must be {'read-only' if want_read_only else 'writable'}"
        )


def test_redis_keeps_its_data_on_a_named_volume(compose, services) -> None:
    assert "redis-data" in (compose.get("volumes") or {}), "declare the named volume `redis-data`"
    assert any(m.source == "redis-data" and m.target == "/data" for m in mounts(services["redis"])), (
        "redis: mount redis-data at /data (appendonly writes there)"
    )


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_every_service_has_a_healthcheck(services, service: str) -> None:
    check = services[service].get("healthcheck") or {}
    test = check.get("test")
    assert test and test not in (["NONE"], "NONE") and not check.get("disable"), (
        f"{service}: needs a healthcheck (depends_on waits on service_healthy)"
    )


def test_depends_on_waits_for_health(services) -> None:
    expected = {"api": "redis", "worker": "redis", "worker-control": "redis", "nginx": "api"}
    for service, dependency in expected.items():
        depends_on = services[service].get("depends_on") or {}
        assert dependency in depends_on, f"{service} must depend on {dependency}"
    for name, config in services.items():
        depends_on = config.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: use the long depends_on form with a condition"
        for dependency, spec in depends_on.items():
            assert (spec or {}).get("condition") == "service_healthy", (
                f"{name}: depends_on {dependency} needs `condition: service_healthy`"
            )


# --- one set of variable names --------------------------------------------------------------
@pytest.mark.parametrize("service", PYTHON_SERVICES)
def test_compose_environment_names_are_settings(services, service: str) -> None:
    unknown = sorted(set(environment(services[service])) - SETTINGS_ENV)
    assert not unknown, f"{service}: {unknown} are not fields of tpotserve.settings.Settings (typo or drift?)"


@pytest.mark.parametrize("name", ["api", "trainer"])
def test_dockerfile_environment_names_are_settings(name: str) -> None:
    unknown = sorted(set(image(name).env()) - SETTINGS_ENV - IMAGE_ENV)
    assert not unknown, f"{name} image: {unknown} are not fields of tpotserve.settings.Settings"


def test_env_example_documents_what_compose_reads(raw_compose) -> None:
    path = REPO / ".env.example"
    assert path.is_file(), ".env.example is missing"
    names = {
        line.split("=", 1)[0].strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    undocumented = sorted(referenced_variables(raw_compose) - names)
    assert not undocumented, f"docker-compose.yml reads {undocumented}; list them in .env.example"
    unknown = sorted(names - SETTINGS_ENV)
    assert not unknown, f".env.example: {unknown} are not fields of tpotserve.settings.Settings"


# --- hardening -------------------------------------------------------------------
@pytest.mark.parametrize("service", ["redis", "api", "worker", "worker-control", "scheduler", "nginx"])
def test_every_service_is_hardened(services, service: str) -> None:
    config = services[service]
    assert config.get("read_only") is True, f"{service}: read_only: true (tmpfs where it must write)"
    assert config.get("cap_drop") == ["ALL"], f"{service}: cap_drop: [ALL]"
    assert "no-new-privileges:true" in config.get("security_opt", []), f"{service}: no-new-privileges"


@pytest.mark.parametrize("service", ["worker", "worker-control"])
def test_forking_workers_have_an_init_and_a_memory_limit(services, service: str) -> None:
    config = services[service]
    assert config.get("init") is True, f"{service}: init: true reaps TPOT's Dask processes"
    assert config.get("mem_limit"), f"{service}: a memory limit keeps a runaway search off the host"
