"""The JVM window logic (``dev.freshet.flink.LogicServer``) driven from Python, for the equivalence tests.

One JVM per test session answers one JSON request per line; the tests feed it the same tables and streams
the Python logic passes and compare the answers. A missing JDK or jar fails with the command that builds it.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flink_jobs import javaops
from freshet.engagement_config import engagement_config, window_config
from freshet.spec import FeatureSet
from freshet.windows import WindowedAggregate

KINDS = ("fire", "late", "drop")


class JvmLogic:
    """A running ``LogicServer``: ``request`` sends one JSON document and returns the answer."""

    def __init__(self, classpath: str) -> None:
        self._proc = subprocess.Popen(
            ["java", "-Xss8m", "-cp", classpath, "dev.freshet.flink.LogicServer"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
        )  # fmt: skip
        atexit.register(self._proc.kill)

    def request(self, doc: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(doc) + "\n")
        self._proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._proc.stdout.readline())
        assert "error" not in answer, answer["error"]
        return answer

    def window(self, feature: WindowedAggregate, steps: list[tuple[Any, ...]]) -> dict[str, Any]:
        """Outputs as ``(kind, start, end, value, firing, event_ts, watermark, reason)``, open ends, due times."""
        script = [list(s) if s[0] == "wm" else [*s[:3], s[3] if len(s) > 3 else 1.0] for s in steps]
        answer = self.request({"op": "window", "feature": window_config(feature), "steps": script})
        answer["outputs"] = [(KINDS[k], s, e, float.fromhex(v), f, ts, wm, reason)
                             for k, s, e, v, f, ts, wm, reason in answer["outputs"]]  # fmt: skip
        return answer

    def engagement(
        self, feature_set: FeatureSet, source: str, steps: list[tuple[Any, ...]]
    ) -> dict[str, Any]:
        """``("event", raw, watermark)`` / ``("wm", watermark)`` over every item, as ``LogicRun`` drives Python."""
        script = [["event", s[1].decode("latin-1"), s[2]] if s[0] == "event" else list(s) for s in steps]
        answer = self.request(
            {"op": "engagement", "config": engagement_config(feature_set, source), "steps": script}
        )
        answer["deltas"] = [bytes.fromhex(d) for d in answer["deltas"]]
        answer["lates"] = [(topic, record.encode()) for topic, record in answer["lates"]]
        return answer

    def parse(self, feature_set: FeatureSet, source: str, raws: list[bytes]) -> list[Any]:
        """Per raw record: ``[item_id, ts_ms]`` when the JVM accepts it, else its reason."""
        doc = {
            "op": "parse",
            "config": engagement_config(feature_set, source),
            "raws": [r.decode("latin-1") for r in raws],
        }
        return list(self.request(doc)["results"])


@functools.cache
def jvm() -> JvmLogic:
    """The session's ``LogicServer`` (started on first use)."""
    if shutil.which("java") is None:
        pytest.fail("no `java` on PATH: install a Java 17 JDK", pytrace=False)
    try:
        jars = javaops.jar_paths()
    except javaops.JavaBuildError as exc:
        pytest.fail(str(exc), pytrace=False)
    flink_dist = [p for p in javaops.compile_classpath() if p.name.startswith("flink-dist")]
    return JvmLogic(":".join(str(Path(p)) for p in [*jars, *flink_dist]))
