"""Ray job: train one autoencoder and its denoiser with Ray Train.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/train.yaml -- \
        python jobs/train.py --data DATA --run RUN --model dae [--workers 4 --gpu --storage s3://...]

Arguments are `semray train`'s. On a multi-node cluster pass --storage (s3://, gs:// or a shared
path): Ray Train's checkpoints are written by whichever node holds rank 0 and must be readable by the
job. Re-submitting the same command resumes from the last checkpoint.
"""
import sys

from semray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
