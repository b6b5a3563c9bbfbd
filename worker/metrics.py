"""Prometheus metrics of a worker, served on its own port (VGS_METRICS_PORT)."""

from __future__ import annotations

import logging
import time

import torch
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

JOBS = Counter("vgs_worker_jobs_total", "jobs finished by this worker, by model and outcome", ["model", "outcome"])
QUEUE_WAIT = Histogram("vgs_worker_queue_wait_seconds", "time from submission to the start of a job", ["model"],
                       buckets=STAGE_BUCKETS)
SAMPLING = Histogram("vgs_worker_sampling_seconds", "time a batch spends sampling codes", ["model"],
                     buckets=STAGE_BUCKETS)
DECODE = Histogram("vgs_worker_decode_seconds", "time a batch spends in the VQ-VAE decoder", ["model"],
                   buckets=STAGE_BUCKETS)
ENCODE = Histogram("vgs_worker_encode_seconds", "time a job spends encoding mp4s", ["model"], buckets=STAGE_BUCKETS)
UPLOAD = Histogram("vgs_worker_upload_seconds", "time a job spends storing its outputs", ["model"],
                   buckets=STAGE_BUCKETS)
TOKENS = Counter("vgs_worker_tokens_total", "codes generated", ["model"])
TOKENS_PER_SECOND = Gauge("vgs_worker_tokens_per_second", "codes per second of the last batch", ["model"])
BATCH_SAMPLES = Histogram("vgs_worker_batch_samples", "samples decoded together in a batch (continuous: the "
                          "mean number beside a job's samples)", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64))
SLOT_WAIT = Histogram("vgs_worker_slot_wait_seconds", "time a claimed job waited for engine slots", ["model"],
                      buckets=STAGE_BUCKETS)
SLOTS_IN_USE = Gauge("vgs_worker_slots_in_use", "engine slots (KV-cache rows) in use", ["model"])
STEPS_PER_SECOND = Gauge("vgs_worker_steps_per_second", "engine steps per second (each advances every "
                         "sample in the engine by one code)", ["model"])
MODEL_LOAD = Gauge("vgs_worker_model_load_seconds", "time taken to load a model", ["model"])
BUSY = Gauge("vgs_worker_busy", "1 while the worker runs a batch, else 0")
HEARTBEAT = Gauge("vgs_worker_last_heartbeat_timestamp_seconds", "unix time of the worker's last heartbeat")
GPU_USED = Gauge("vgs_worker_gpu_memory_used_bytes", "GPU memory in use (CUDA only)")
GPU_TOTAL = Gauge("vgs_worker_gpu_memory_total_bytes", "GPU memory in all (CUDA only)")


def serve(port: int) -> bool:
    """Serve /metrics on port (0: not at all); a taken port is logged, not fatal: jobs matter more."""
    if not port:
        return False
    try:
        start_http_server(port)
        return True
    except OSError as exc:
        log.warning("worker metrics not served: port %d: %s", port, exc)
        return False


def beat() -> None:
    HEARTBEAT.set(time.time())
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        GPU_USED.set(total - free)
        GPU_TOTAL.set(total)
