"""The queues that carry job ids to workers: one RQ queue per model, and the only module that calls RQ.

Jobs are RQ jobs in RQ's own queues (so RQ's tools still show them), but the job record (jobs/store.py) is
the source of truth. Each queue entry is an RQ job whose id is `<job id>-<nonce>` and whose function is
`worker.tasks.run_job(job id)`: a worker that takes entries itself (to batch them) reads the job id off
the entry's id, and a job put back on its queue after a lost worker gets a fresh entry.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from .connection import as_text

WORKER_TASK = "worker.tasks.run_job"  # by name: the gateway never imports the worker (torch)


@dataclass(frozen=True)
class Entry:
    """A job's place in a model's queue."""

    job_id: str
    rq_id: str

    @classmethod
    def parse(cls, rq_id: str) -> Entry:
        return cls(rq_id.rpartition("-")[0] or rq_id, rq_id)


class JobQueue:
    """The queues of one namespace: `{namespace}:{model}` in RQ's naming."""

    def __init__(self, client: redis.Redis, namespace: str, failure_ttl_s: int):
        self.redis, self.namespace, self.failure_ttl_s = client, namespace, failure_ttl_s

    def name(self, model: str) -> str:
        """The RQ queue name of a model: workers serving it listen there."""
        return f"{self.namespace}:{model}"

    def model_of(self, queue_name: str) -> str:
        return queue_name.removeprefix(f"{self.namespace}:")

    def _rq(self, model: str) -> Queue:
        return Queue(self.name(model), connection=self.redis)

    def enqueue(self, job_id: str, model: str, pipe: redis.client.Pipeline) -> str:
        """Queue job_id for model as part of the transaction pipe; returns the entry's RQ id."""
        # rq opens the transaction (MULTI) on the pipeline, so it must come first on a fresh one.
        rq_job = self._rq(model).enqueue_call(WORKER_TASK, args=(job_id,), timeout=-1, result_ttl=60,
                                              failure_ttl=self.failure_ttl_s, pipeline=pipe,
                                              job_id=f"{job_id}-{uuid.uuid4().hex[:12]}")
        return rq_job.id

    def take(self, model: str) -> Entry | None:
        """The entry at the head of model's queue, taken off it (None when the queue is empty)."""
        rq_id = as_text(self.redis.lpop(self._rq(model).key))
        return None if rq_id is None else Entry.parse(rq_id)

    def put_back(self, model: str, entry: Entry) -> None:
        """Return a taken entry to the head of its queue (it did not fit; it keeps its turn)."""
        self._rq(model).push_job_id(entry.rq_id, at_front=True)

    def forget(self, entry: Entry) -> None:
        """Delete RQ's record of a taken entry: its job now runs outside RQ's own loop."""
        try:
            Job.fetch(entry.rq_id, connection=self.redis).delete(remove_from_queue=False)
        except NoSuchJobError:  # expired or already gone: nothing to delete
            pass

    def is_queued(self, model: str, rq_id: str) -> bool:
        return self._rq(model).get_job_position(rq_id) is not None

    def remove(self, model: str, rq_id: str) -> None:
        """Take an entry off its queue (a job canceled while queued)."""
        self._rq(model).remove(rq_id)
        self.forget(Entry.parse(rq_id))

    def list_key(self, model: str) -> str:
        """The Redis list that holds model's entries (what an autoscaler such as KEDA watches)."""
        return self._rq(model).key

    def depth(self, model: str) -> int:
        """How many entries wait in model's queue (JobStore.queued_count counts only those of queued jobs)."""
        return self._rq(model).count

    def entries(self, model: str) -> list[Entry]:
        """The entries waiting in model's queue, head first."""
        return [Entry.parse(rq_id) for rq_id in self._rq(model).get_job_ids()]
