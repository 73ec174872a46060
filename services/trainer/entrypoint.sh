#!/bin/sh
# The trainer's one start command, used by the container and by the native
# launcher alike. $1 picks the queue this worker serves:
#   training  long TPOT runs (and, first, the bootstrap model if none exists)
#   control   quick store operations such as activate/rollback, never stuck behind a training
#   scheduler evaluates the models' retraining policies and enqueues trainings (not a worker)
set -eu
role="${1:-training}"
worker_class=rq.worker.Worker
case "$role" in
  training) python -m tpotserve_trainer.bootstrap ;;
  # An activate is a hash check and one rename: run it in the worker's process, no fork per
  # job, so it is done in milliseconds while POST /models/<v>/activate waits for it.
  control) worker_class=rq.worker.SimpleWorker ;;
  scheduler) exec python -m tpotserve_trainer.scheduler ;;
  *) echo "usage: $0 training|control|scheduler" >&2; exit 2 ;;
esac
# --job-monitoring-interval 5: the horse's heartbeat; a job whose worker was
# killed shows as failed at most ~65 s later (RQ adds 60 s to the interval).
# --maintenance-interval 30: how often a worker fails (or retries) jobs of dead workers.
exec rq worker --config tpotserve_trainer.rq_config --worker-class "$worker_class" \
  --job-monitoring-interval 5 --maintenance-interval 30 "$role"
