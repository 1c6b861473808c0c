"""What the ranks other than 0 of a torchrun job do: wait for rank 0 to say which job to train, train it.

Rank 0 owns the job (its queue, events, checkpoints, artifacts); the others
hold no state of their own and read the job's recipe, data and initial
student from the shared work_dir, so a restarted torchrun resumes from
rank 0's checkpoint on every rank.
"""

from __future__ import annotations

import logging

from radixfair_distiller.config import DistillerConfig
from radixfair_distiller.distributed import DistributedContext
from radixfair_distiller.job_store import JobStore
from radixfair_distiller.pipeline import JobPaths, TrainJob, train_on_follower
from radixfair_distiller.recipe import resolve_recipe

log = logging.getLogger(__name__)


def follow_main(config: DistillerConfig, dist: DistributedContext) -> None:
    """Trains every job rank 0 announces, until rank 0 says there are no more (None)."""
    store = JobStore(config.jobs_dir)
    while True:
        message = dist.broadcast()
        if message is None:
            return
        if not isinstance(message, TrainJob):
            raise RuntimeError(f"rank {dist.rank}: unexpected message from rank 0: {message!r}")
        log.info("rank %d: training job %s", dist.rank, message.job_id)
        resolved = resolve_recipe(store.recipe_text(message.job_id), config.model_cache_dir)
        train_on_follower(resolved, JobPaths(store.job_dir(message.job_id), config.cache_dir), dist)
