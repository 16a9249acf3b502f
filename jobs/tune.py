"""Ray job: a Ray Tune search over the nine model/score combinations.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/tune.yaml -- \
        python jobs/tune.py --data DATA --out TUNE_DIR --config bench/configs/tune_gpu.yaml \
        --gpus-per-trial 0.5 --storage s3://BUCKET/tune

Arguments are `semray tune`'s; `python jobs/tune.py --resume TUNE_DIR` continues a search whose job
was stopped.
"""
import sys

from semray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
