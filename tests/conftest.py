"""Shared fixtures. Real services start once per session, and only when a test asks for them.

A missing component fails the test with the command that installs it; nothing is skipped silently.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from freshet.broker import EmbeddedBroker
from freshet.errors import FreshetError

if TYPE_CHECKING:
    from kafka.consumer.fetcher import ConsumerRecord

_serial = itertools.count()

# No per-example deadline anywhere: on a shared 2-core machine one example can take 100x the next (a JVM
# round trip, a GC pause), and a deadline would fail a correct property for the machine's load.
settings.register_profile("freshet", deadline=None)
settings.load_profile("freshet")


def _kafka_helpers() -> Any:
    try:
        import kafka_helpers as helpers  # tests/ is on sys.path (rootdir conftest, no package)
    except ImportError as exc:
        pytest.fail(f"kafka-python is not importable ({exc}): run `./dev setup`", pytrace=False)
    return helpers


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The embedded Kafka-protocol broker, started once per session; its log is under pytest's tmp dir."""
    try:
        embedded = EmbeddedBroker(work_dir=tmp_path_factory.mktemp("broker")).start()
    except FreshetError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def make_topic(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """``make_topic(partitions=1, name="x")`` creates a topic whose name is unique in the session."""
    helpers = _kafka_helpers()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]

    def make(partitions: int = 1, name: str = "t") -> str:
        topic = f"{stem}.{name}.{next(_serial)}"
        return str(helpers.create_topic(broker.bootstrap_servers, topic, partitions))

    return make


@pytest.fixture
def read_committed(broker: EmbeddedBroker) -> Callable[..., list[ConsumerRecord]]:
    """``read_committed(topic, min_records=None, timeout_s=10)``: a topic's committed records, from the start."""
    helpers = _kafka_helpers()

    def read(topic: str, **kwargs: Any) -> list[ConsumerRecord]:
        return list(
            helpers.read_topic(broker.bootstrap_servers, topic, isolation_level="read_committed", **kwargs)
        )

    return read
