"""What every declaration model shares: the frozen strict base, name rules, and located problems."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from freshet.errors import FreshetError

#: Feature, source, bit and model names: lower-case identifiers (they become column and metric names).
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
#: Event field names: identifiers as they appear in the JSON events.
FIELD_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: Kafka topic names: the characters Kafka allows.
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"

Name = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
FieldName = Annotated[StrictStr, Field(pattern=FIELD_NAME_PATTERN)]
Topic = Annotated[StrictStr, Field(pattern=TOPIC_PATTERN)]


class Frozen(BaseModel):
    """Base of every declaration model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldProblem(ValueError):
    """A model-level check that blames one of the model's keys, so the message points at that key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class SpecError(FreshetError):
    """Feature definitions that cannot be used; ``problems`` lists every one, each ``file: path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the feature definitions:\n" + "\n".join(problems))
        self.problems = problems
