"""Jobs on disk: one directory per job with its recipe, its state and its event log.

Everything a restarted distiller needs to resume lives here; nothing about a
job is only in memory.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from radixfair_distiller.events import EventLog, JobState


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    # Artifact name from the recipe.
    name: str
    state: JobState
    created: float
    error: str = ""


class JobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def create(self, name: str, recipe_text: str) -> JobRecord:
        # Time-ordered ids: listing the directory sorts jobs by submission.
        job_id = f"job-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        job_dir = self.job_dir(job_id)
        job_dir.mkdir(parents=True)
        (job_dir / "recipe.yaml").write_text(recipe_text)
        record = JobRecord(job_id, name, JobState.QUEUED, time.time())
        self.save(record)
        return record

    def save(self, record: JobRecord) -> None:
        path = self.job_dir(record.job_id) / "job.json"
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps({**asdict(record), "state": record.state.value}))
        os.replace(staging, path)

    def update(self, record: JobRecord, **changes: object) -> JobRecord:
        updated = replace(record, **changes)  # type: ignore[arg-type]
        self.save(updated)
        return updated

    def load(self, job_id: str) -> JobRecord | None:
        path = self.job_dir(job_id) / "job.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return JobRecord(**{**raw, "state": JobState(raw["state"])})

    def all(self) -> list[JobRecord]:
        records = [self.load(p.name) for p in sorted(self.root.iterdir()) if (p / "job.json").exists()]
        return sorted((r for r in records if r is not None), key=lambda r: (r.created, r.job_id))

    def recipe_text(self, job_id: str) -> str:
        return (self.job_dir(job_id) / "recipe.yaml").read_text()

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"bad job id {job_id!r}")
        return self.root / job_id

    def events(self, job_id: str) -> EventLog:
        return EventLog(job_id, self.job_dir(job_id) / "events.jsonl")
