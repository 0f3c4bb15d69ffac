"""The async latency class: ``POST /v1/jobs`` queues a chat completion, a worker runs it.

A job is a row of ``ponder_jobs`` in the gateway's own database (SQLite or
PostgreSQL), written before ``POST /v1/jobs`` answers, so it survives a crash
or a restart. Its body is validated at enqueue exactly as the chat endpoint
would (bad input is a 400 and stores nothing); quota is reserved, settled and
written to the ledger when the job *runs*, through the same
:meth:`Gateway.chat` path as an interactive request, so a job refused for quota
ends ``failed`` with the 429 body and has spent nothing.

Guarantees:

- **One run at a time.** Claiming is one transaction: ``SELECT ... FOR UPDATE
  SKIP LOCKED`` then a conditional ``UPDATE ... WHERE status = 'queued'`` on
  PostgreSQL, the database write lock (``BEGIN IMMEDIATE``) on SQLite. Every
  later write about the job is conditional on the claim (worker and attempt),
  so a worker that lost its claim changes nothing.
- **Once in the ledger.** The job's result is written by a callback *inside the
  settlement transaction* that writes its ledger row (whose id is the job's
  ``request_id``): a job has its row if and only if it has its result.
- **Crashes.** A running job holds a lease that its worker renews; when the
  lease runs out (or, at startup, when the process that held it is gone from
  this host) it goes back to the queue, at most ``job_max_attempts`` runs in
  all. A job interrupted by a clean shutdown goes back without using an attempt.
"""

from ponder.ledger.jobs import JOB_STATUSES, Job
from ponder.server.jobs.handlers import Jobs
from ponder.server.jobs.queue import JobConflict, JobLost, JobNotFound, JobQueue, TooManyJobs
from ponder.server.jobs.worker import JobWorker, dead_on_this_host, worker_id

__all__ = [
    "JOB_STATUSES",
    "Job",
    "JobConflict",
    "JobLost",
    "JobNotFound",
    "JobQueue",
    "JobWorker",
    "Jobs",
    "TooManyJobs",
    "dead_on_this_host",
    "worker_id",
]
