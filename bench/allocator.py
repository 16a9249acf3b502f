"""glibc malloc's thresholds, as semray sets them (semray.allocator.reuse_freed_memory), against its
defaults: patches/s of stage-1 training, stage-2 training and scoring (all scores, the denoiser's
included) with the default models, in fp32 and in what `auto` picks here, each figure measured by
semray.budget.measure_rates (the training throughput probe) in a fresh process per setting,
alternating, best of the rounds. Also the page faults per scored batch, which is what the setting
removes: glibc unmaps every freed block over 32 MiB, so a scoring batch through the denoiser
page-faults its activations in again on every call.

    .venv/bin/python bench/allocator.py [--rounds 2] [--seconds 4] [--denoisers 20x64,10x32]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

SETTINGS = ("glibc default", "semray")


def child(setting: str, precision: str, denoiser: str, seconds: float) -> dict:
    from semray.allocator import reuse_freed_memory
    from semray.budget import measure_rates
    from semray.config import Config

    if setting == "semray":
        assert reuse_freed_memory(), "the thresholds could not be set here"

    depth, width = (int(v) for v in denoiser.split("x"))
    cfg = Config.from_dict({"denoiser": {"depth": depth, "width": width},
                            "train": {"precision": precision}, "eval": {"precision": precision}})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rates = measure_rates(cfg, "cpu", seconds=seconds)
    rates["minor_faults_M"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 1e6
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--precisions", default="fp32,auto")
    p.add_argument("--denoisers", default="20x64,10x32")
    p.add_argument("--child", nargs=3, metavar=("SETTING", "PRECISION", "DENOISER"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.seconds)))
        return
    from semray.config import Config
    from semray.device import cpu_name

    cfg = Config()
    print(f"CPU: {cpu_name()}; default {cfg.model.kind.upper()} (width {cfg.model.width}), training batch "
          f"{cfg.train.batch_size}, scoring batch {cfg.eval.batch_size}; "
          f"{args.rounds} round(s), {args.seconds:g} s per training figure")
    best: dict = {}
    for r in range(args.rounds):
        for precision in args.precisions.split(","):
            for denoiser in args.denoisers.split(","):
                for setting in SETTINGS:
                    out = subprocess.run([sys.executable, __file__, "--seconds", str(args.seconds), "--child",
                                          setting, precision, denoiser], capture_output=True, text=True, check=True)
                    rates = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"round {r + 1}: {precision} {denoiser} {setting}: " + ", ".join(
                        f"{k} {v:,.1f}" for k, v in rates.items()), flush=True)
                    row = best.setdefault((precision, denoiser, setting), {})
                    for k, v in rates.items():
                        row[k] = min(row.get(k, v), v) if k == "minor_faults_M" else max(row.get(k, 0.0), v)
    print(f"\n{'precision':9s} {'denoiser':8s} {'setting':14s} {'stage 1':>16s} {'stage 2':>16s} {'scoring':>16s}"
          f" {'faults (M)':>10s}")
    for (precision, denoiser, setting), row in best.items():
        base = best[precision, denoiser, SETTINGS[0]]
        print(f"{precision:9s} {denoiser:8s} {setting:14s}" + "".join(
            f" {row[k]:8,.0f} ({row[k] / base[k]:4.2f}x)" for k in ("autoencoder", "denoiser", "score"))
              + f" {row['minor_faults_M']:10.1f}")


if __name__ == "__main__":
    main()
