"""Precision and memory format on this machine: patches/s of scoring, stage-1 and stage-2 training
for the default-size models in fp32, fp32 + channels_last, bf16 autocast, bf16 + channels_last and
what `precision: auto` picks here, all in one run, with the ratio to plain fp32 (the code path before
the speed issue, at the training batch of then: 64) and auto's fraction of the fastest variant. Every
other variant trains at today's batch of each stage (train.batch_size, train.denoiser_batch_size);
where that differs from 64, the old code path at today's batches is measured too ("fp32 at today's
batches"), so the ratio of the same batch is printed beside the ratio to the old default.

    .venv/bin/python bench/precision.py [--seconds 4] [--threads 2] [--rounds 2]

Which variant is fastest differs by CPU (bf16 is a 3x win with AMX and a 10x loss on an
AVX2-only EPYC), so the choice must be measured or detected, never assumed. Inputs are random
patches: throughput does not depend on their content.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from semray.device import Precision

USES = {"scoring": "score", "stage-1 training": "autoencoder", "stage-2 training": "denoiser"}
BASELINE_BATCH = 64  # both stages' training batch before the speed issue
SAME_BATCH_BASELINE = "fp32 at today's batches"
DEVICE = torch.device("cpu")
COMPILE = False
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def first_cpu() -> dict[str, str]:
    """The first CPU's entries of /proc/cpuinfo (empty elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().split("\n\n")[0].splitlines() if cpuinfo.exists() else []
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def cpu_description() -> str:
    """The first CPU's model, family/model numbers and the flags that decide bf16 speed."""
    info = first_cpu()
    flags = set(info.get("flags", "").split())
    model = info.get("model name", platform.processor() or "unknown CPU")
    return (f"{model} (family {info.get('cpu family', '?')} model {info.get('model', '?')}); "
            + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in FLAGS))


def rate(step, batch: int, seconds: float, device: torch.device) -> float:
    """patches/s of step() after one warm-up step, over at least `seconds` (and one step: a slow
    variant, such as bf16 emulated on an AVX2-only CPU, is measured on fewer steps)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    sync()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 1:
        step()
        n += 1
        sync()
    return n * batch / elapsed


def fp32_peak_gflops(threads: int) -> tuple[float, str]:
    """The CPU's fp32 peak for `threads` cores, and how it was computed: cores x clock x fp32 FLOP per
    cycle per core (two FMA units: 2 x 2 x 8 lanes = 32 with AVX2, 64 with AVX-512; 16 on Zen 1,
    family 23 model 1, whose 256-bit FMAs run as two 128-bit halves; 32 on Zen 4, family 25, which
    runs AVX-512 on two 256-bit FMA pipes). The clock is /proc/cpuinfo's 'cpu MHz' (what the kernel
    saw last, not a guaranteed boost clock). bf16 dot products (AVX512-BF16, AMX) do twice or more
    the fp32 peak, so a bf16 figure can exceed 100% of it."""
    info = first_cpu()
    flags = set(info.get("flags", "").split())
    ghz = float(info.get("cpu MHz", "nan")) / 1000
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "23" and info.get("model") == "1":
        per_cycle = 16
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25" and "avx512f" in flags:
        per_cycle = 32
    return threads * ghz * per_cycle, f"{threads} core(s) x {ghz:.2f} GHz x {per_cycle} fp32 FLOP/cycle"


def forward_flops(module: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward pass (torch's own counter: 2 per multiply-add of convolutions and
    matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return float(counter.get_total_flops())


def variants():
    """(name, precision, memory format): today's fp32 path first (the baseline of every ratio), the
    other three fixed combinations, then what semray's auto settings choose on this machine."""
    from semray.device import memory_format, memory_format_name, resolve_precision

    yield "fp32", Precision("fp32", "fixed"), torch.contiguous_format
    yield SAME_BATCH_BASELINE, Precision("fp32", "fixed"), torch.contiguous_format
    for bf16 in (False, True):
        for channels_last in (False, True):
            if not bf16 and not channels_last:
                continue  # the baseline, above
            yield (("bf16" if bf16 else "fp32") + (" + channels_last" if channels_last else ""),
                   Precision("bf16" if bf16 else "fp32", "fixed"),
                   torch.channels_last if channels_last else torch.contiguous_format)
    auto = {figure: resolve_precision("auto", DEVICE, use=use) for figure, use in USES.items()}
    fmts = {figure: memory_format(DEVICE, use) for figure, use in USES.items()}
    yield ("auto (" + "/".join(f"{auto[k].name} {memory_format_name(fmts[k])}" for k in USES) + ")", auto, fmts)
    if COMPILE:
        yield "auto + torch.compile", auto, fmts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per figure")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--score-batch", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=0,
                   help="training batch size of both stages, baseline included (default: each stage's, the "
                        "package's; the baseline's 64)")
    p.add_argument("--rounds", type=int, default=1, help="measure every variant this many times, round-robin, and "
                                                         "keep each figure's best (evens out drift between variants)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", action="store_true", help="also measure auto's variant under torch.compile "
                                                          "(inductor; compile time excluded)")
    p.add_argument("--allocator", choices=("glibc", "semray"), default="glibc",
                   help="glibc: malloc's own thresholds for every variant (the baseline's conditions); semray: "
                        "the thresholds semray sets in its processes (semray.allocator), for every variant")
    p.add_argument("--skip", default="", help="comma-separated variant names not to measure, e.g. 'bf16,bf16 + "
                                              "channels_last' where bf16 is emulated and takes minutes per figure")
    args = p.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.allocator == "semray":
        from semray.allocator import reuse_freed_memory

        reuse_freed_memory()
    global DEVICE, COMPILE
    DEVICE = device = torch.device(args.device)
    COMPILE = args.compile

    from semray.config import Config
    from semray.loop import AutoencoderObjective, DenoiserObjective, adam, make_ema
    from semray.models import AnomalyDetector, create_autoencoder, create_denoiser
    from semray.models.autoencoders import LatentDeconv

    torch.set_num_threads(args.threads)
    cfg = Config()
    size = cfg.patches.size
    batches = {stage: args.train_batch or cfg.train.batch_and_ema(USES[stage])[0]
               for stage in ("stage-1 training", "stage-2 training")}
    baseline_batches = {stage: args.train_batch or BASELINE_BATCH for stage in batches}
    if baseline_batches == batches:
        skip.add(SAME_BATCH_BASELINE)
    train_batch = "/".join(str(b) for b in batches.values())
    gpu = f"; GPU: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"CPU: {cpu_description()}{gpu}")
    print(f"torch {torch.__version__}, {args.threads} thread(s); default models: {cfg.model.kind} width "
          f"{cfg.model.width}, denoiser {cfg.denoiser.depth}x{cfg.denoiser.width}; scoring batch "
          f"{args.score_batch}, training batch (stage 1/2) {train_batch} (the fp32 baseline: "
          f"{'/'.join(str(b) for b in baseline_batches.values())}); {args.seconds:g} s per figure; "
          f"malloc thresholds: {args.allocator}'s")

    def fresh(fmt, legacy=False):
        """legacy: the baseline's code path, from before the speed work: the decoder's first layer
        a plain ConvTranspose2d (semray.models.autoencoders.LatentDeconv computes it as the dense
        layer it is) and Adam's per-tensor loop instead of its fused kernel."""
        torch.manual_seed(0)
        ae, den = create_autoencoder(cfg.model, size), create_denoiser(cfg.denoiser, cfg.model.init_std)
        if legacy:
            for i, m in enumerate(ae.decoder):
                if isinstance(m, LatentDeconv):
                    plain = torch.nn.ConvTranspose2d(*m.weight.shape[:2], 5, stride=2, padding=2, output_padding=1)
                    with torch.no_grad():
                        plain.weight.normal_(0.0, cfg.model.init_std)[:, :, 2:4, 2:4] = m.weight
                        plain.bias.copy_(m.bias)
                    ae.decoder[i] = plain
        return ae.to(device, memory_format=fmt), den.to(device, memory_format=fmt)

    results: dict[str, dict[str, float]] = {}
    for name, precisions, fmts in (v for _ in range(args.rounds) for v in variants()):
        if name in skip:
            continue
        if not isinstance(fmts, dict):
            fmts = {figure: fmts for figure in USES}
        if not isinstance(precisions, dict):
            precisions = {figure: precisions for figure in USES}
        row = results.setdefault(name, {})
        fmt, precision = fmts["scoring"], precisions["scoring"]
        ae, den = fresh(fmt, legacy=name in ("fp32", SAME_BATCH_BASELINE))
        if "compile" in name:
            ae, den = torch.compile(ae), torch.compile(den)
        detector = AnomalyDetector(ae, den, precision=precision, memory_format=fmt).eval()  # semray's scoring path
        raw = torch.rand(args.score_batch, 1, size, size, device=device)

        def score(detector=detector, raw=raw):  # this variant's, bound now
            with torch.inference_mode():
                detector.scores(raw)
        row["scoring"] = max(row.get("scoring", 0.0), rate(score, args.score_batch, args.seconds, device))

        for stage in ("stage-1 training", "stage-2 training"):
            fmt, precision = fmts[stage], precisions[stage]
            legacy = name in ("fp32", SAME_BATCH_BASELINE)
            batch = baseline_batches[stage] if name == "fp32" else batches[stage]
            ae, den = fresh(fmt, legacy)
            if "compile" in name:
                ae, den = torch.compile(ae), torch.compile(den)
            if stage == "stage-1 training":
                objective, params = AutoencoderObjective(ae).train(), ae.parameters()
            else:
                objective = DenoiserObjective(ae, den, cfg.denoiser.input_noise).train()
                params = den.parameters()
            params = list(params)
            optimizer = torch.optim.Adam(params, lr=1e-3) if legacy else adam(params, 1e-3, 0.9, device)
            trainable = objective.model
            ema = make_ema(trainable, cfg.train.batch_and_ema(USES[stage])[1])
            x = torch.randn(batch, 1, size, size, device=device)

            def train_step(fmt=fmt, objective=objective, optimizer=optimizer, x=x, precision=precision,
                           ema=ema, trainable=trainable):
                # as semray.train.run_epoch does it
                with precision.autocast(device):
                    loss = objective(x.contiguous(memory_format=fmt))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # master weights and Adam's state stay fp32
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(trainable)
            row[stage] = max(row.get(stage, 0.0), rate(train_step, batch, args.seconds, device))
        print(f"  measured {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()), flush=True)

    base = results["fp32"]
    print(f"\n{'variant':24s}" + "".join(f"{k:>26s}" for k in base))
    for name, row in results.items():
        print(f"{name:24s}" + "".join(f"{row[k]:12.0f} p/s ({row[k] / base[k]:5.2f}x)" for k in base))
    fastest = {k: max(results, key=lambda n: results[n][k]) for k in base}
    print("\nfastest: " + "; ".join(f"{k}: {v}" for k, v in fastest.items()))
    auto = next(n for n in results if n.startswith("auto"))
    print("auto against the fastest: " + "; ".join(
        f"{k} {results[auto][k] / results[fastest[k]][k]:.0%}" for k in base))
    if SAME_BATCH_BASELINE in results:
        same = results[SAME_BATCH_BASELINE]
        print(f"auto against the old code path at the same batches ({train_batch}): " + "; ".join(
            f"{k} {results[auto][k] / same[k]:.2f}x" for k in base if k != "scoring"))
    if device.type == "cpu":
        # training = forward + backward ~ 3 forwards; stage 2 = the frozen AE's forward + 3 denoiser forwards
        x = torch.zeros(1, 1, size, size)
        ae, den = fresh(torch.contiguous_format)
        f_ae, f_den = forward_flops(ae.cpu(), x), forward_flops(den.cpu(), x)
        per_patch = {"scoring": f_ae + f_den, "stage-1 training": 3 * f_ae, "stage-2 training": f_ae + 3 * f_den}
        peak, how = fp32_peak_gflops(args.threads)
        print(f"\nfp32 peak {peak:.0f} GFLOP/s ({how}); FLOP per patch: autoencoder {f_ae / 1e6:.1f} M, "
              f"denoiser {f_den / 1e6:.1f} M forward")
        for name in ("fp32", auto):
            if name in results:
                print(f"{name}: " + "; ".join(f"{k} {results[name][k] * per_patch[k] / 1e9:.1f} GFLOP/s = "
                                              f"{results[name][k] * per_patch[k] / 1e9 / peak:.0%} of peak"
                                              for k in base))


if __name__ == "__main__":
    main()
