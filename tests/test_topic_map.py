"""``--topic DECLARED=ACTUAL``: the one parser behind the job's, the export's and backfill's option."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshet.cli import main as cli_main
from freshet.topic_map import TopicMapError, parse_topic_map

FEATURE_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"


@pytest.mark.parametrize(
    ("pairs", "mapping"),
    [
        (None, {}),
        ([], {}),
        (["engagement=prod.engagement"], {"engagement": "prod.engagement"}),
        (["engagement=e1", "item.attributes=i1"], {"engagement": "e1", "item.attributes": "i1"}),
        (["engagement=a=b"], {"engagement": "a=b"}),  # ACTUAL is all after the first '='
        (
            ["engagement=e1", "engagement=e2"],
            {"engagement": "e2"},
        ),  # a later pair wins, as argparse's last value
    ],
)
def test_pairs_map_declared_to_actual_topics(pairs: list[str] | None, mapping: dict[str, str]) -> None:
    assert parse_topic_map(pairs) == mapping


@pytest.mark.parametrize(
    "pair",
    ["engagement", "", "=", "=prod.engagement", "engagement="],
    ids=["no '='", "empty", "both sides empty", "no declared topic", "no actual topic"],
)
def test_a_malformed_pair_is_refused_naming_it(pair: str) -> None:
    with pytest.raises(TopicMapError) as caught:
        parse_topic_map(["engagement=e1", pair])
    assert str(caught.value) == f"--topic wants DECLARED=ACTUAL, got {pair!r}"


@pytest.mark.parametrize(
    ("command", "failed"),
    [
        (
            ["backfill", "--events", "kafka://127.0.0.1:9", "--until", "end", "--out", "snapshots"],
            "backfill failed",
        ),
        (["job", "export-events", "--bootstrap", "127.0.0.1:9", "--out", "events"], "export failed"),
    ],
)
def test_the_commands_reading_topics_refuse_a_malformed_pair_before_any_read(
    command: list[str],
    failed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing is written: the pair is refused before a broker is asked
    assert cli_main([*command, "--defs", str(FEATURE_DEFS), "--topic", "engagement"]) == 2
    assert f"{failed}: --topic wants DECLARED=ACTUAL, got 'engagement'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
