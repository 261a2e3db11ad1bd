"""The cluster deployment in docker/ is complete and consistent, checked without a Docker engine.

Fast and offline: YAML parsing, cross-references between the compose file, the Dockerfile, the Flink config, the
build-context filter and the project's own pins (connector jar checksums, torch, the sink's transaction timeout).
The health-check script is exercised against stand-in HTTP servers on the loopback interface.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import re
import shlex
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from freshet.spec import load_feature_set

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
FLINK_SERVICES = ("jobmanager", "taskmanager")
REPLICAS = ("replica-1", "replica-2")
# Every topic the feature definitions name (sources, late-data side outputs), plus the job's own outputs.
_DEFS = load_feature_set(ROOT / "feature_defs")
TOPICS = (
    {s.topic for s in _DEFS.sources}
    | {f.late.topic for f in _DEFS.features if f.late.topic}
    | {"freshet.deltas", "freshet.dlq"}
)
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# --- loading ---------------------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@functools.cache
def flink_config() -> dict[str, Any]:
    return _flatten(yaml.safe_load((DOCKER / "flink-conf" / "config.yaml").read_text()))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


@functools.cache
def dockerfile_instructions() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", (DOCKER / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    return tuple((parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in pairs)


def dockerfile_args() -> dict[str, str]:
    pairs = (args.split("=", 1) for op, args in dockerfile_instructions() if op == "ARG" and "=" in args)
    return {name: value for name, value in pairs}


def pinned_jars() -> dict[str, tuple[str, str]]:
    """jar name -> (sha256, version), from the list ./dev setup verifies its jars against."""
    lines = (ROOT / "flink_jobs" / "connector_jars.sha256").read_text().splitlines()
    rows = (line.split() for line in lines if line.strip() and not line.startswith("#"))
    return {name: (sha, version) for sha, name, version in rows}


def copy_sources() -> list[str]:
    """Sources of every COPY that reads the build context (not --from another stage)."""
    sources = []
    for op, args in dockerfile_instructions():
        words = shlex.split(args)
        if op == "COPY" and not any(w.startswith("--from=") for w in words):
            sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def service_command(name: str) -> list[str]:
    command = services()[name]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> volume name (named volumes only; bind mounts start with . / or ~)."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = (
            (entry["source"], entry["target"]) if isinstance(entry, dict) else entry.split(":")[:2]
        )
        if not source.startswith((".", "/", "~")):
            found[target] = source
    return found


def host_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host ip, host port) of every published port, short or long syntax."""
    published = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published.append((entry.get("host_ip", "0.0.0.0"), str(entry["published"])))
            continue
        parts = str(entry).split(":")
        if len(parts) >= 2:
            published.append((parts[0] if len(parts) == 3 else "0.0.0.0", parts[-2]))
    return published


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    return (
        {d: "service_started" for d in deps}
        if isinstance(deps, list)
        else {d: c["condition"] for d, c in deps.items()}
    )


# --- the compose file ------------------------------------------------------------------------------------------


def test_compose_has_the_whole_cluster() -> None:
    expected = {"kafka", "kafka-init", "jobmanager", "taskmanager", "submit", *REPLICAS}
    assert expected <= set(services())


@pytest.mark.parametrize("name", sorted(yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]))
def test_depends_on_targets_exist_with_a_condition_they_can_meet(name: str) -> None:
    for target, condition in depends_on(services()[name]).items():
        assert target in services(), f"{name} depends on unknown service {target}"
        assert condition in DEPENDS_ON_CONDITIONS, f"{name} -> {target}: {condition}"
        if condition == "service_healthy":
            assert "healthcheck" in services()[target], (
                f"{name} waits for {target} to be healthy; it has no check"
            )
        if condition == "service_completed_successfully":
            assert services()[target].get("restart", "no") == "no", (
                f"{target} restarts, so it never completes"
            )


def test_depends_on_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in depends_on(services()[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in services():
        visit(name, ())


def test_every_named_volume_is_declared_and_used() -> None:
    declared = set(compose().get("volumes") or {})
    used = {volume for service in services().values() for volume in mounts(service).values()}
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared <= used, f"declared but unused volumes: {declared - used}"


def test_host_ports_do_not_collide() -> None:
    published = [(name, ip, port) for name, service in services().items() for ip, port in host_ports(service)]
    for i, (name, ip, port) in enumerate(published):
        for other, other_ip, other_port in published[i + 1 :]:
            clash = port == other_port and (ip == other_ip or "0.0.0.0" in (ip, other_ip))
            assert not clash, f"host port {port} is published by both {name} and {other}"


def test_taskmanager_scales_without_edits() -> None:
    taskmanager = services()["taskmanager"]
    assert "container_name" not in taskmanager and not host_ports(taskmanager)
    assert "hostname" not in taskmanager


def test_flink_services_mount_every_directory_the_flink_config_names() -> None:
    uris = [
        flink_config()[k] for k in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir")
    ]
    for name in FLINK_SERVICES:
        for uri in uris:
            assert uri.startswith("file://")
            assert uri.removeprefix("file://") in mounts(services()[name]), f"{name} does not mount {uri}"


def test_flink_services_run_the_entrypoint_roles() -> None:
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    for name in FLINK_SERVICES:
        (role,) = service_command(name)
        assert f"{role})" in entrypoint and f'bin/{role}.sh" start-foreground' in entrypoint


def test_jobmanager_rpc_address_is_its_service_name() -> None:
    assert flink_config()["jobmanager.rpc.address"] == "jobmanager" == services()["jobmanager"]["hostname"]


def test_submit_runs_the_cli_with_the_agreed_flags() -> None:
    command = service_command("submit")
    assert command[:3] == ["freshet", "job", "submit"]
    assert flag(command, "--jobmanager") == f"jobmanager:{flink_config()['rest.port']}"
    assert flag(command, "--bootstrap") == "kafka:9092"
    assert (flag(command, "--defs"), flag(command, "--models")) == ("/app/feature_defs", "/data/models")
    assert "/data/models" in mounts(services()["submit"])


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_serves_on_all_interfaces_and_reports_readiness(name: str) -> None:
    replica, command = services()[name], service_command(name)
    assert command[:2] == ["freshet", "serve"] and flag(command, "--bootstrap") == "kafka:9092"
    assert replica["environment"]["FRESHET_HOST"] == "0.0.0.0"
    (port,) = [str(p).split(":")[-1] for p in replica["ports"]]
    assert port == flag(command, "--port")
    assert f"http://127.0.0.1:{port}/readyz" in replica["healthcheck"]["test"]


def test_replicas_share_the_snapshot_volume_in_their_own_directories() -> None:
    directories = [flag(service_command(name), "--snapshots") for name in REPLICAS]
    assert len(set(directories)) == len(directories), "two replicas pruning one directory delete each other's"
    for name, directory in zip(REPLICAS, directories, strict=True):
        assert Path(directory).parent == Path("/data/snapshots")
        assert mounts(services()[name])["/data/snapshots"] == "snapshots"


def test_kafka_is_a_single_kraft_node_with_transactions() -> None:
    env = services()["kafka"]["environment"]
    assert services()["kafka"]["image"] == services()["kafka-init"]["image"] == "apache/kafka:3.9.1"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and "CLUSTER_ID" in env
    assert (
        env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]
        == 1
        == env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]
    )
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_broker_accepts_the_sinks_transaction_timeout() -> None:
    from flink_jobs.sinks import KAFKA_MAX_TRANSACTION_TIMEOUT_MS, KeyedBytesSink

    broker_max = services()["kafka"]["environment"]["KAFKA_TRANSACTION_MAX_TIMEOUT_MS"]
    sink_default = KeyedBytesSink.__dataclass_fields__["transaction_timeout_ms"].default
    assert sink_default <= KAFKA_MAX_TRANSACTION_TIMEOUT_MS <= broker_max


def test_kafka_init_creates_every_topic() -> None:
    script = " ".join(service_command("kafka-init"))
    created = set(re.findall(r"topic ([\w.]+) \d+", script))
    assert created == TOPICS


# --- the Dockerfile and its build context ----------------------------------------------------------------------


def test_compose_builds_the_dockerfile_from_the_repository_root() -> None:
    builds = [s["build"] for s in services().values() if "build" in s]
    assert builds and all(b == builds[0] for b in builds)
    assert (DOCKER / builds[0]["context"]).resolve() == ROOT
    assert (ROOT / builds[0]["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_copy_sources_exist_in_the_build_context() -> None:
    missing = [source for source in copy_sources() if not (ROOT / source).exists()]
    assert copy_sources() and not missing, f"COPY sources not in the build context: {missing}"


def test_copy_sources_pass_the_dockerignore() -> None:
    ignore = DockerIgnore(DOCKER / "Dockerfile.dockerignore")
    for source in copy_sources():
        path = ROOT / source
        files = (
            [path]
            if path.is_file()
            else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        assert files, f"{source} is empty"
        kept = [f for f in files if not ignore.excludes(f.relative_to(ROOT).as_posix())]
        assert kept == files, f"{source}: the dockerignore drops {sorted(set(files) - set(kept))[:3]}"


@pytest.mark.parametrize(
    "path", [".venv/bin/python", ".git/HEAD", ".freshet/jars/kafka-clients.jar", "tests/x.py"]
)
def test_dockerignore_keeps_local_state_out_of_the_context(path: str) -> None:
    assert DockerIgnore(DOCKER / "Dockerfile.dockerignore").excludes(path)


def test_connector_jars_are_the_pinned_versions_checked_against_the_project_list() -> None:
    args, pins = dockerfile_args(), pinned_jars()
    assert pins["flink-connector-kafka.jar"][1] == args["FLINK_CONNECTOR_KAFKA_VERSION"]
    assert pins["kafka-clients.jar"][1] == args["KAFKA_CLIENTS_VERSION"]
    adds = [shlex.split(a) for op, a in dockerfile_instructions() if op == "ADD"]
    assert sorted(dest for _, dest in adds) == sorted(pins), "jars are saved under the names the list uses"
    assert all(url.startswith("https://repo1.maven.org/maven2/") for url, _ in adds)
    runs = " ".join(a for op, a in dockerfile_instructions() if op == "RUN")
    assert "flink_jobs/connector_jars.sha256" in copy_sources() and "sha256sum -c" in runs


def test_connector_checksums_are_well_formed() -> None:
    for name, (sha, version) in pinned_jars().items():
        assert re.fullmatch(r"[0-9a-f]{64}", sha) and name.endswith(".jar") and version


def test_torch_is_the_cpu_build_pinned_in_constraints() -> None:
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    (torch,) = [line for line in pins if line.startswith("torch==")]
    assert torch.endswith("+cpu")
    runs = " ".join(a for op, a in dockerfile_instructions() if op == "RUN")
    assert "grep -E '^torch==' constraints.txt" in runs
    assert dockerfile_args()["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_image_paths_agree_with_the_flink_config() -> None:
    env = " ".join(a for op, a in dockerfile_instructions() if op == "ENV")
    assert "FLINK_CONF_DIR=/opt/freshet/flink-conf" in env and "VIRTUAL_ENV=/opt/venv" in env
    assert (
        flink_config()["python.executable"]
        == flink_config()["python.client.executable"]
        == "/opt/venv/bin/python"
    )
    python = re.search(r"python:(3\.\d+)-", dockerfile_args()["PYTHON_IMAGE"])
    assert python and f"FLINK_HOME=/opt/venv/lib/python{python.group(1)}/site-packages/pyflink" in env


def test_image_runs_as_a_numeric_non_root_user() -> None:
    (user,) = [a for op, a in dockerfile_instructions() if op == "USER"]
    uid = dockerfile_args()["FRESHET_UID"]
    assert user == "${FRESHET_UID}:${FRESHET_UID}" and int(uid) > 0


# --- the Flink configuration -----------------------------------------------------------------------------------

EXPECTED_FLINK = {
    "jobmanager.rpc.address": "jobmanager",
    "rest.port": 8081,
    "rest.bind-address": "0.0.0.0",
    "execution.checkpointing.dir": "file:///data/checkpoints",
    "execution.checkpointing.savepoint-dir": "file:///data/savepoints",
    "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
    "execution.checkpointing.interval": "1s",
    "execution.checkpointing.mode": "EXACTLY_ONCE",
    "python.execution-mode": "process",
    "classloader.parent-first-patterns.additional": "org.apache.kafka.",
}
# Flink 1.x names that Flink 2 renamed: a config using them is read with a warning at best.
RENAMED_IN_FLINK_2 = (
    "state.checkpoints.dir",
    "state.savepoints.dir",
    "state.backend",
    "execution.savepoint.path",
)


@pytest.mark.parametrize(("key", "value"), sorted(EXPECTED_FLINK.items()))
def test_flink_config_sets(key: str, value: object) -> None:
    assert flink_config()[key] == value


def test_flink_config_uses_flink_2_names_only() -> None:
    assert not set(RENAMED_IN_FLINK_2) & set(flink_config())


def test_flink_config_state_backend_and_slots() -> None:
    assert flink_config()["state.backend.type"] in {"hashmap", "rocksdb"}
    assert isinstance(flink_config()["taskmanager.numberOfTaskSlots"], int)
    assert flink_config()["taskmanager.numberOfTaskSlots"] >= 1


def mib(size: str) -> int:
    match = re.fullmatch(r"(\d+)([mg])", size.lower())
    assert match, f"unexpected memory size {size!r}"
    return int(match[1]) * (1024 if match[2] == "g" else 1)


def test_flink_memory_fits_a_laptop() -> None:
    jobmanager, taskmanager = (mib(flink_config()[f"{role}.memory.process.size"]) for role in FLINK_SERVICES)
    assert jobmanager + 2 * taskmanager <= 8 * 1024


def test_flink_config_keeps_the_java_17_module_flags_flink_ships() -> None:
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        pytest.fail("pyflink is not installed: run ./dev setup (it installs apache-flink)", pytrace=False)
    shipped = _flatten(yaml.safe_load((Path(spec.origin).parent / "conf" / "config.yaml").read_text()))
    assert flink_config()["env.java.opts.all"] == shipped["env.java.opts.all"]


# --- the health checks -----------------------------------------------------------------------------------------


@functools.cache
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("freshet_healthcheck", DOCKER / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_health_checks_use_roles_the_script_has() -> None:
    roles = {"jobmanager", "taskmanager", "http"}
    for name, service in services().items():
        test = service.get("healthcheck", {}).get("test", [])
        if "freshet-healthcheck" in test:
            assert test[test.index("freshet-healthcheck") + 1] in roles, name
    assert healthcheck().main(["nonsense"]) == 2


@pytest.fixture
def rest_server() -> Iterator[dict[str, Any]]:
    """A loopback HTTP server answering GET path -> (status, JSON body) from the returned dict."""
    routes: dict[str, Any] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = routes.get(self.path, (404, {}))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    routes["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield routes
    server.shutdown()
    server.server_close()


def test_http_check_follows_the_status_code(rest_server: dict[str, Any]) -> None:
    rest_server["/readyz"] = (200, {"ready": True})
    rest_server["/notyet"] = (503, {"ready": False})
    assert healthcheck().main(["http", rest_server["url"] + "/readyz"]) == 0
    assert healthcheck().main(["http", rest_server["url"] + "/notyet"]) == 1


def test_jobmanager_check_reads_the_overview(rest_server: dict[str, Any]) -> None:
    assert healthcheck().main(["jobmanager", rest_server["url"]]) == 1
    rest_server["/overview"] = (200, {"taskmanagers": 1, "slots-available": 2})
    assert healthcheck().main(["jobmanager", rest_server["url"]]) == 0


def test_taskmanager_check_finds_this_container_among_the_registered(
    rest_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(healthcheck(), "REST", rest_server["url"])
    address = socket.getaddrinfo(socket.gethostname(), None)[0][4][0]
    other = {
        "id": "10.255.0.9:6122-aaaaaa",
        "path": "pekko.tcp://flink@10.255.0.9:6122/user/rpc/taskmanager_0",
    }
    mine = {
        "id": f"{address}:6122-bbbbbb",
        "path": f"pekko.tcp://flink@{address}:6122/user/rpc/taskmanager_0",
    }
    slots = {"freeSlots": 2, "slotsNumber": 2}
    rest_server["/taskmanagers"] = (200, {"taskmanagers": [{**other, **slots}]})
    assert healthcheck().main(["taskmanager"]) == 1
    rest_server["/taskmanagers"] = (200, {"taskmanagers": [{**other, **slots}, {**mine, **slots}]})
    assert healthcheck().main(["taskmanager"]) == 0


# --- a .dockerignore matcher (Docker's rules: last matching pattern wins, a match on a parent counts) ----------


class DockerIgnore:
    def __init__(self, path: Path) -> None:
        lines = (line.strip() for line in path.read_text().splitlines())
        self.rules = [
            (line.startswith("!"), self._regex(line.lstrip("!"))) for line in lines if line and line[0] != "#"
        ]

    @staticmethod
    def _regex(pattern: str) -> re.Pattern[str]:
        out, rest = "", pattern.strip("/")
        tokens = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        while rest:
            token = next((t for t in tokens if rest.startswith(t)), None)
            out, rest = (
                (out + tokens[token], rest[len(token) :]) if token else (out + re.escape(rest[0]), rest[1:])
            )
        return re.compile(out)

    def excludes(self, relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for negated, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                excluded = not negated
        return excluded


def test_dockerignore_matcher_follows_dockers_rules(tmp_path: Path) -> None:
    (tmp_path / "ignore").write_text("*\n!src/\n**/__pycache__\n")
    ignore = DockerIgnore(tmp_path / "ignore")
    assert ignore.excludes("README.md") and ignore.excludes("src/__pycache__/a.pyc")
    assert not ignore.excludes("src/a.py") and not ignore.excludes("src/pkg/b.py")
