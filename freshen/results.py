"""What the service's steps return: typed, one shape per step, with ``to_json`` for Airflow's
XCom and the CLI's ``--json`` (the engine's own result is ``editing.api.EditResult``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class GateResult:
    """The gate's verdict on a version (``refresh.gate``), or a refresh's end
    (``refresh.refresh``: ``status`` "nothing to do" when nothing was approved)."""

    status: str  # "passed", "rejected" or "nothing to do"
    champion: int | None  # the champion after the gate
    version: int | None = None
    reasons: str = ""  # why it was rejected ("; "-joined), empty when it passed
    table: list[dict] = field(default_factory=list)  # metric, candidate, champion, delta, relative
    grid: str | None = None  # before/after PNG
    docs_page: str | None = None  # GX Data Docs page of the validation
    gate_dir: str | None = None  # where gate.json and the table were written
    already: bool = False  # gated before: the verdict recorded then
    seconds: dict[str, float] = field(default_factory=dict)  # a refresh's stages

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> GateResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class PromoteResult:
    """A champion moved by hand (``refresh.promote``): a rollback or an overruled gate."""

    champion: int
    previous: int
    by: str
    reason: str
    dropped_versions: list[int]  # versions left behind: their facts went back to pending

    def to_json(self) -> dict:
        return asdict(self)
