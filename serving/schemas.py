"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


UserValue = str | int | float | list[str]


class RetrieveRequest(_Strict):
    embedding: list[float] | None = Field(
        None,
        description="query embedding; exactly the layout's embedding_dim floats (or give `user`)",
        min_length=1,
        examples=[[0.1, 0.0, 0.3]],
    )
    user: dict[str, UserValue] | None = Field(
        None,
        description="user features for the active model's query tower (instead of `embedding`)",
        examples=[{"user_id": 42, "interests": ["cats", "cooking"]}],
    )
    k: int = Field(10, ge=1, le=MAX_K, description="number of items to return")
    required_bits: list[str] = Field(
        default_factory=list, description="exact eligibility bits that must be set"
    )
    excluded_bits: list[str] = Field(
        default_factory=list, description="exact eligibility bits that must be unset"
    )
    bloom: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Bloom requirements: field -> accepted values (an item passes a field if it may hold any of them)",
        examples=[{"region": ["PT"], "language": ["pt", "en"]}],
    )


class Hit(BaseModel):
    item_id: int
    score: float
    features: dict[str, float] = Field(description="the item's feature values the score used")


class RetrieveResponse(BaseModel):
    model_version: int = Field(description="the model version that answered (index and query tower)")
    layout_hash: str
    items: list[Hit]


class Eligibility(BaseModel):
    bits: list[str] = Field(description="exact bits that are set")
    bloom: dict[str, list[int]] = Field(
        description="per Bloom field, the set bit positions relative to the field's block"
    )
    bloom_matches: dict[str, dict[str, bool]] = Field(
        default_factory=dict,
        description="for the values asked with ?bloom=field:value, whether the item may hold them",
    )


class ItemResponse(BaseModel):
    item_id: int
    model_version: int
    embedding: list[float] | None
    features: dict[str, float]
    eligibility: Eligibility
    versions: dict[str, int] = Field(
        description="per region (embedding, eligibility, feature name), its version"
    )


class StateResponse(BaseModel):
    model_version: int
    layout_hash: str
    topic: str
    offsets: dict[str, int] = Field(description="partition -> next delta topic offset to apply")
    digest: str
    items: int
    ready: bool
    started_from_snapshot: str | None
    flink_checkpoint: str | None = Field(
        None, description="newest completed Flink checkpoint (chk-N directory) this state includes, if known"
    )
    query_tower: bool = Field(description="whether the active version has a query tower (user queries)")
    standby_version: int | None = Field(description="model version beside the active one, if any")
    standby_role: str | None = Field(description="staged (to switch to) or previous (to roll back to)")


class ReadyResponse(BaseModel):
    ready: bool
    lag: dict[str, int | None]
    detail: str


class SnapshotResponse(BaseModel):
    path: str
    offsets: dict[str, int]
    model_version: int
    digest: str
    items: int


class ModelRequest(_Strict):
    version: int | None = Field(None, ge=1, description="published version; default: the newest")
    min_coverage: float = Field(
        0.0, ge=0.0, le=1.0,
        description="switch only once the new index holds this fraction of the active one's items; "
        "until then the version stays staged (call again)",
    )  # fmt: skip
    snapshot: bool = Field(True, description="write a snapshot right after the switch")


class ModelResponse(BaseModel):
    status: str = Field(description="staged, switched or rolled_back")
    active_version: int
    standby_version: int | None
    coverage: float | None = Field(description="retrievable items of the new index / of the active one")
    snapshot: str | None
