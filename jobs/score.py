"""Ray job: bulk-score an archive of SEM images into Parquet anomaly maps.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/score.yaml -- \
        python jobs/score.py INPUT... --run RUN --out OUT [--gpus-per-worker 1 ...]

Arguments are `semray score`'s. On a cluster, INPUT and OUT must be reachable from every node
(s3://, gs://, or a shared file system); the model is read once by the job (RUN may be a path or
a URI) and shipped to the scoring actors, so the worker nodes never read RUN. Re-submitting the same
command resumes: images already in OUT are skipped, so a job killed overnight loses nothing.
"""
import sys

from semray.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
