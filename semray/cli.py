"""`semray`: defect detection in SEM images of nanofibrous materials, one command with sub-commands.

Sub-commands: synth, train, evaluate, calibrate, tune, score, triage, predict, overlay, report, export,
demo.

Errors users can fix (bad images, bad configs, unusable run directories, a full disk) end in one
line on stderr and the exit code of semray.errors (2 for bad input), not a traceback; anything else
is a bug and keeps its traceback (exit 1).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import yaml

import semray.ray_env  # noqa: F401  (Ray's environment defaults, set before anything imports ray)
from semray import __version__
from semray.allocator import reuse_freed_memory
from semray.config import PRECISIONS, load_config
from semray.errors import EXIT_CODES, ConfigError, NothingDoneError, PartialFailureError, SemrayError
from semray.files import atomic_write, to_json
from semray.log import configure, duration
from semray.scores import DEFAULT_PIXEL_MAP, DEFAULT_SCORE, FALLBACK_PIXEL_MAP, FALLBACK_SCORE, PIXEL_MAPS, SCORE_NAMES


def _number(cast: type, ok=lambda v: True, expected: str = "a finite number"):
    """An argparse `type=`: a finite number that passes `ok`, so an out-of-range flag ends in argparse's
    error naming it (exit 2) before any work starts, Ray included, instead of being silently replaced by
    a default downstream (`stride or cfg.eval.stride`) or failing deep inside with a traceback."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive whole number")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
finite_float = _number(float)
positive_float = _number(float, lambda v: v > 0, "a positive number")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")


def _overrides(args: argparse.Namespace) -> dict:
    o: dict = {"model": {}, "train": {}}
    if getattr(args, "model", None):
        o["model"]["kind"] = args.model
    for flag, key in (("epochs", "epochs"), ("denoiser_epochs", "denoiser_epochs"), ("workers", "num_workers"),
                      ("seed", "seed"), ("max_failures", "max_failures")):
        if getattr(args, flag, None) is not None:
            o["train"][key] = getattr(args, flag)
    if getattr(args, "gpu", False):
        o["train"]["use_gpu"] = True
    if getattr(args, "precision", None):  # train and tune: both stages and the run's own scoring
        o["train"]["precision"] = args.precision
        o["eval"] = {"precision": args.precision}
    return {k: v for k, v in o.items() if v}


def cmd_synth(args) -> int:
    from semray.data.synth import SynthConfig, write_dataset

    cfg = SynthConfig(n_normal=args.normal, n_anomalous=args.anomalous, seed=args.seed,
                      height=args.height, width=args.width)
    out = write_dataset(args.out_dir, cfg)
    print(f"wrote {cfg.n_normal} normal and {cfg.n_anomalous} anomalous synthetic SEM images to {out}")
    return 0


def cmd_train(args) -> int:
    from semray.train import train_run

    cfg = load_config(args.config, _overrides(args))
    if args.print_config:  # what this command would train with (train.budget is resolved when it starts)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    train_run(args.data, args.run, cfg, address=args.address, storage=args.storage)
    return 0


def cmd_evaluate(args) -> int:
    from semray.evaluate import evaluate_run, format_table, write_json

    result = evaluate_run(args.run, args.data, stride=args.stride, min_defect_pixels=args.min_defect_pixels,
                          use_gpu=True if args.gpu else None, smoothing_px=args.smoothing_px,
                          precision=args.precision, pixel_stride=args.pixel_stride)
    print(format_table([result]))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_tune(args) -> int:
    from semray.tune import SearchInterrupted, load_tune_spec, read_spec, recipe_path, tune_search

    if args.resume:
        spec, tune_dir = read_spec(args.resume), args.resume
    else:
        if not (args.data and args.out):
            raise ConfigError("--data and --out are required (or --resume TUNE_DIR)")
        if args.recipe and args.config:
            raise ConfigError("--recipe and --config both name a search; give one (copy the recipe's YAML "
                             "from semray/recipes/ to change it)")
        settings = {k: v for k, v in (("samples", args.samples), ("gpus_per_trial", args.gpus_per_trial),
                                      ("cpus_per_trial", args.cpus_per_trial), ("score", args.score),
                                      ("scheduler", args.scheduler), ("max_concurrent_trials", args.max_concurrent))
                    if v is not None}
        config = recipe_path(args.recipe) if args.recipe else args.config
        spec, tune_dir = load_tune_spec(args.data, config, settings, args.storage or "", _overrides(args)), args.out
    try:
        tune_search(spec, tune_dir, address=args.address, resume=bool(args.resume))
    except SearchInterrupted as e:
        print(f"semray tune: interrupted: {e}", file=sys.stderr)
        return 130
    return 0


def cmd_calibrate(args) -> int:
    from semray.data.datasets import load_normal_images
    from semray.evaluate import calibrate_run

    images = [image for _, image in load_normal_images(args.data)]
    c = calibrate_run(args.run, images, f"the normal images in {Path(args.data).resolve() / 'Normal'}",
                      fpr=args.fpr, stride=args.stride, use_gpu=True if args.gpu else None,
                      precision=args.precision)
    print(f"thresholds for a {c['fpr']:.2%} false-positive rate on {c['windows']} normal windows "
          f"(stride {c['stride']}): " + ", ".join(f"{k} {v:.4g}" for k, v in c["scores"].items()))
    return 0


def cmd_score(args) -> int:
    from semray.pipeline import job_from_args, raise_for_failures, score_archive

    job = job_from_args(inputs=args.inputs, run=args.run, out=args.out, stride=args.stride, score=args.score,
                        workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                        gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size,
                        threshold=args.threshold, patches=args.patches, images_per_file=args.images_per_file,
                        precision=args.precision, max_pixels=args.max_pixels,
                        max_failed_fraction=args.max_failed_fraction, map_scale=args.map_scale,
                        pixel_map=args.pixel_map)
    raise_for_failures(score_archive(job, address=args.address), job.max_failed_fraction)
    return 0


def cmd_predict(args) -> int:
    from semray.predict import RUN_DEFAULT, load_run

    run = load_run(args.run, score=args.score, stride=args.stride, use_gpu=True if args.gpu else None,
                   precision=args.precision,
                   pixel_map=None if args.pixel_map == "none" else (args.pixel_map or RUN_DEFAULT))
    out = Path(args.png) if args.png else None
    results, failures = [], []
    for image, name in zip(args.images, _overlay_names(args.images)):
        try:
            p = run.predict(image, threshold=args.threshold)
        except SemrayError as e:  # one unreadable image must not cost the others (as in `semray score`)
            if len(args.images) > 1:
                print(f"semray predict: failed: {e}", file=sys.stderr)
            results.append({"source": image, "page": 0, "error": getattr(e, "reason", str(e))})
            failures.append(e)
            continue
        line = (f"{image}: {'DEFECTS' if p.defective else 'no defect'}: image score {p.score:.4g} "
                f"(threshold {p.threshold:.4g}), {len(p.regions)} region(s)")
        result = p.to_dict()
        if out:
            out.mkdir(parents=True, exist_ok=True)
            png = out / name
            run.overlay(p).save(png)
            line += f"; {png}"
            result["overlay"] = str(png)
        print(line)
        results.append(result)
    if args.json:
        atomic_write(args.json, to_json(results))
        print(f"wrote {args.json}")
    if len(args.images) == 1 and failures:
        raise failures[0]  # the one image given is the bad input: its own one-line error, exit 2
    where = "listed above" + (f" and in {args.json}" if args.json else "")
    if len(failures) == len(args.images):
        raise NothingDoneError(f"none of the {len(failures)} images could be scored ({where})")
    if failures:
        raise PartialFailureError(f"{len(failures)} of {len(args.images)} images could not be scored ({where}); "
                                  "the others' results are written")
    return 0


def _overlay_names(images: list[str]) -> list[str]:
    """IMAGE-defects.png for each image, numbered (IMAGE-2-defects.png, ...) where two images share a
    file name (A/x.tif and B/x.tif), so that no overlay silently replaces another in the one folder."""
    names, used = [], set()
    for image in images:
        stem, n = Path(image).stem, 1
        name = f"{stem}-defects.png"
        while name in used:
            n += 1
            name = f"{stem}-{n}-defects.png"
        used.add(name)
        names.append(name)
    return names


def cmd_export(args) -> int:
    from semray.export import export_onnx

    path = export_onnx(args.run, args.out, stride=args.stride)
    print(f"wrote {path}: input 'image' (1, 1, H, W) in [0, 1] -> 'scores' ({len(SCORE_NAMES)}, ny, nx): "
          f"the {', '.join(SCORE_NAMES)} score of each window (fused: its windows' part, without the texture "
          f"component semray adds from the whole image; see semray/export.py)")
    return 0


def cmd_triage(args) -> int:
    from semray.triage import build_triage

    page = build_triage(args.out_dir, args.out, top=args.top)
    print(f"wrote {page} (open it in a browser; no server needed)")
    return 0


def cmd_overlay(args) -> int:
    from semray.data.io import read_image
    from semray.overlay import render_overlay
    from semray.pipeline import find_record

    record = find_record(args.out_dir, args.image, args.page)
    image = read_image(record["source"], record["page"])
    render_overlay(image, record).save(args.png, format="PNG")  # else PIL picks it by suffix: none for `ov`
    print(f"wrote {args.png} ({record['regions_count']} region(s) at threshold {record['threshold']:.4g})")
    return 0


def cmd_report(args) -> int:
    from semray.report import build_report

    page = build_report(args.run, args.data, args.out, stride=args.stride, examples=args.examples,
                        use_gpu=True if args.gpu else None, precision=args.precision)
    print(f"wrote {page} (open it in a browser; no server needed)")
    return 0


def cmd_demo(args) -> int:
    from semray.data.synth import SynthConfig, write_dataset
    from semray.evaluate import evaluate_run, format_cells, format_table
    from semray.train import train_run

    started = time.time()
    out = Path(args.out)
    data = write_dataset(out / "data", SynthConfig(seed=args.seed))
    print(f"[demo] synthetic SEM images in {data}")
    results = []
    kinds = ("ae", "dae", "cvae")
    for i, kind in enumerate(kinds):
        spent = time.time() - started
        left = f"about {duration(spent / i * (len(kinds) - i))} left" if i else "the first model sets the pace"
        print(f"[demo] model {i + 1} of {len(kinds)}: {kind.upper()}: training its autoencoder, then its "
              f"denoiser, then scoring the test images ({left})", flush=True)
        precision = {"precision": args.precision} if args.precision else {}
        cfg = load_config(args.config, {"model": {"kind": kind}, "train": {"use_gpu": args.gpu, **precision},
                                        "eval": precision} if args.config
                          else {**DEMO_SETTINGS, "model": {**DEMO_SETTINGS["model"], "kind": kind},
                                "train": {**DEMO_SETTINGS["train"], "use_gpu": args.gpu, **precision},
                                "eval": {**DEMO_SETTINGS["eval"], **precision}})
        train_run(data, out / "runs" / kind, cfg, address=args.address)
        results.append(evaluate_run(out / "runs" / kind, data, use_gpu=True if args.gpu else None))
        print(f"[demo] {kind} done after {duration(time.time() - started)}", flush=True)
    print()
    print(format_table(results))
    print()
    print(format_cells(results))
    print(f"\n[demo] finished in {duration(time.time() - started)}; runs in {out / 'runs'}")
    return 0


# Small, fast settings, sized for five minutes on a 2-core laptop (measured: about 2 minutes on an
# AMD EPYC with AVX-512; estimated about 4 on the AVX2-only kind; bench/RESULTS.md). Most of the
# time is Ray Train starting and stopping each stage's worker, so the training budgets are a few
# thousand patches per model. At this budget per-patch standardisation (the default, best on
# NanoTWICE after 30 epochs) still reconstructs the synthetic beads and films as well as fibres
# (AUROC ~0.5); one mean/std for the whole image keeps their brightness and separates them (~0.79).
# That figure shows the plumbing, not learning: an untrained model scores the same on these images.
DEMO_SETTINGS = {
    "patches": {"normalization": "image"},
    # the simulated-defect map from 100,000 pixels, not 600,000: its fit took the demo from 3 to 4.5 min
    "model": {"width": 16, "latent_dim": 64, "defect_pixels": 100_000},
    "denoiser": {"depth": 4, "width": 16},
    "train": {"epochs": 3, "denoiser_epochs": 1, "patches_per_epoch": 4096,
              "denoiser_patches_per_epoch": 2048, "batch_size": 128,
              "budget": "full"},  # sized by hand for a laptop: nothing to measure
    "eval": {"stride": 16},
}


class _Help(argparse.HelpFormatter):
    """Shows each option's default where it has one worth reading (not None or False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "%(default)" not in text and \
                "default" not in text and action.option_strings and not isinstance(action, argparse._StoreConstAction):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semray", description=__doc__.splitlines()[0],
                                epilog="exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()))
    p.add_argument("--version", action="version", version=f"semray {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    talk = common.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                      help="print warnings and results only")
    talk.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                      help="print debug messages too")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_Help, **kwargs)  # every command shows its defaults
    precision = argparse.ArgumentParser(add_help=False)
    precision.add_argument("--precision", choices=PRECISIONS,
                           help="number format of the forward passes: auto (bf16 where the device runs it fast: "
                                "a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16; else fp32), fp32 or bf16. "
                                "Default: the run's config (auto)")

    s = command("synth", parents=[common], help="write a synthetic SEM data set in the NanoTWICE layout")
    s.add_argument("out_dir", help="directory to write (Normal/, Anomalous/images/, Anomalous/gt/)")
    s.add_argument("--normal", type=non_negative_int, default=5, help="defect-free images")
    s.add_argument("--anomalous", type=non_negative_int, default=10,
                   help="images with beads and films, and their masks")
    s.add_argument("--height", type=int, default=384, help="image height in pixels (at least 32)")
    s.add_argument("--width", type=int, default=512, help="image width in pixels (at least 32)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="random seed: the same seed writes the same images")
    s.set_defaults(func=cmd_synth)

    t = command("train", parents=[common, precision], help="train an autoencoder and its denoiser with Ray Train")
    t.add_argument("--data", required=True, help="data directory in the NanoTWICE layout")
    t.add_argument("--model", choices=["ae", "dae", "cvae"], help="autoencoder kind (default: the config's, dae)")
    t.add_argument("--run", required=True, help="run directory (created; resumed if it exists)")
    t.add_argument("--config", help="YAML file overriding config sections (see README)")
    t.add_argument("--epochs", type=positive_int, help="autoencoder epochs (default: the config's, 30)")
    t.add_argument("--denoiser-epochs", type=positive_int, help="denoiser epochs (default: the config's, 24)")
    t.add_argument("--workers", type=positive_int,
                   help="Ray Train workers (data-parallel; default: the config's train.num_workers, 1)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker")
    t.add_argument("--seed", type=non_negative_int, help="random seed of weights and patches (default 0)")
    t.add_argument("--max-failures", type=int,
                   help="worker failures to survive by restarting from the last checkpoint (default 0)")
    t.add_argument("--storage", help="Ray Train checkpoint root (s3://, gs:// or a shared path; needed on a "
                                     "multi-node cluster); default: RUN/ray")
    t.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    t.add_argument("--print-config", action="store_true",
                   help="print the config this command would train with (defaults, --config, flags) and exit")
    t.set_defaults(func=cmd_train)

    e = command("evaluate", parents=[common, precision], help="patch-level AUROC/precision/recall/F1 of a run")
    e.add_argument("--run", required=True, help="trained run directory (semray train, or a tune's best/)")
    e.add_argument("--data", required=True, help="data directory whose Anomalous/ images and masks to score")
    e.add_argument("--stride", type=positive_int, help="window stride in pixels (default: the run's eval.stride, 16)")
    e.add_argument("--min-defect-pixels", type=positive_int,
                   help="defect pixels that make a patch anomalous (default: the run's eval.min_defect_pixels, 1)")
    e.add_argument("--smoothing-px", type=non_negative_int,
                   help="average each window's score with neighbours within this many pixels (0 = off; "
                        "default: the run's eval.smoothing_px, 16)")
    e.add_argument("--pixel-stride", type=non_negative_int,
                   help="stride of the windows stitched into per-pixel maps (default: the run's eval.pixel_stride, "
                        "8; 0 = window grid only)")
    e.add_argument("--json", help="also write the results to this JSON file")
    e.add_argument("--gpu", action="store_true", help="score on the GPU (an error if there is none)")
    e.set_defaults(func=cmd_evaluate)

    u = command("tune", parents=[common, precision], help="Ray Tune search over the nine model/score combinations")
    u.add_argument("--data", help="data directory in the NanoTWICE layout")
    u.add_argument("--out", help="search directory (Tune state, results.parquet, best.json, best/)")
    u.add_argument("--config", help="YAML: config sections, plus `search:` and `tune:` sections (see README)")
    u.add_argument("--recipe", choices=["laptop", "gpu"],
                   help="a search shipped with semray: laptop (6 trials, ~50 min on 2 CPU cores) or gpu "
                        "(18 full-budget trials, 4 per GPU)")
    u.add_argument("--samples", type=positive_int,
                   help="samples of the space; each is tried with every model kind (default 1)")
    u.add_argument("--cpus-per-trial", type=positive_float, help="CPUs per trial's Ray Train worker (default 1)")
    u.add_argument("--gpus-per-trial", type=non_negative_float,
                   help="GPUs per trial; fractions share a GPU (default 0)")
    u.add_argument("--max-concurrent", type=non_negative_int,
                   help="trials at once (0 or default: as many as resources hold)")
    u.add_argument("--score", choices=["best", *SCORE_NAMES],
                   help="objective: validation AUROC of this score (default: the best of them)")
    u.add_argument("--scheduler", choices=["asha", "fifo"],
                   help="asha stops weak trials early (default); fifo runs all to the end")
    u.add_argument("--resume", metavar="TUNE_DIR", help="continue an interrupted search")
    u.add_argument("--storage", help="Tune storage path or URI (s3://..., gs://...); default: --out")
    u.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    u.set_defaults(func=cmd_tune)

    c = command("calibrate", parents=[common, precision],
                help="thresholds from normal images at a target false-positive rate")
    c.add_argument("--run", required=True, help="trained run directory; thresholds go to RUN/threshold.json")
    c.add_argument("--data", required=True, help="data directory whose Normal/ images to calibrate on")
    c.add_argument("--fpr", type=finite_float,
                   help="fraction of normal windows to flag (default: eval.threshold_fpr, 0.01)")
    c.add_argument("--stride", type=positive_int, help="window stride (default: the run's eval.stride, 16)")
    c.add_argument("--gpu", action="store_true", help="score on the GPU (an error if there is none)")
    c.set_defaults(func=cmd_calibrate)

    b = command("score", parents=[common, precision], help="bulk-score images on Ray Data into Parquet anomaly maps")
    b.add_argument("inputs", nargs="+", help="files, directories (recursive), globs or URIs (s3://...)")
    b.add_argument("--run", required=True,
                   help="trained run directory (semray train, or a tune's best/), a path or a URI (s3://...)")
    b.add_argument("--out", required=True, help="output directory (re-run to resume: finished images are skipped)")
    b.add_argument("--stride", type=positive_int, help="window stride (default: the run's eval.stride)")
    b.add_argument("--score", choices=SCORE_NAMES,
                   help=f"the score the maps, regions and threshold use (default: {DEFAULT_SCORE}, or "
                        f"{FALLBACK_SCORE} for a run trained before it)")
    b.add_argument("--workers", type=positive_int, help="scoring actors (default: one per CPU, or per GPU share)")
    b.add_argument("--cpus-per-worker", type=positive_float,
                   help="CPUs (threads) per scoring actor (default 1; a GPU actor: its GPU share of its node's CPUs)")
    b.add_argument("--gpus-per-worker", type=non_negative_float,
                   help="GPUs per scoring actor (fractions share a GPU; default 0: CPU actors)")
    b.add_argument("--batch-size", type=positive_int, help="windows per forward pass (default 512)")
    b.add_argument("--threshold", type=finite_float, help="override the run's calibrated threshold")
    b.add_argument("--patches", action="store_true", help="also write one row per window to patches/")
    b.add_argument("--map-scale", type=non_negative_int, default=0,
                   help="also store the per-pixel map, downsampled by this factor (e.g. 4; float16), beside the "
                        "window grid; stitched from windows at the run's eval.pixel_stride (8: about 4x the "
                        "scoring work of stride 16). 0 = off")
    b.add_argument("--pixel-map", choices=PIXEL_MAPS,
                   help="which per-pixel map --map-scale stores (1 - SSIM or squared residual, against the "
                        f"reconstruction or the smooth output, or their fusion with knn; default: {DEFAULT_PIXEL_MAP}, "
                        f"or {FALLBACK_PIXEL_MAP} for a run calibrated before it)")
    b.add_argument("--images-per-file", type=positive_int,
                   help="images per Parquet part (default 64); fewer means less work redone after a crash")
    b.add_argument("--max-pixels", type=positive_int,
                   help="pixels per image page above which a file is an error row, checked from its header "
                        "before any pixel is read (default: 625000000, a 25000 x 25000 page)")
    b.add_argument("--max-failed-fraction", type=finite_float, default=0.01,
                   help="fraction of failed images (over the whole --out) above which the command exits 3, "
                        "after writing everything it could")
    b.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    b.set_defaults(func=cmd_score)

    o = command("overlay", parents=[common], help="draw an image's anomaly map and regions from a score output")
    o.add_argument("out_dir", help="a `semray score --out` directory")
    o.add_argument("--image", required=True, help="the image, as given to semray score")
    o.add_argument("--page", type=non_negative_int, default=0, help="page of a multi-page TIFF")
    o.add_argument("--png", required=True, help="the picture to write (PNG, whatever its suffix)")
    o.set_defaults(func=cmd_overlay)

    q = command("predict", parents=[common, precision],
                help="score a few images in this process (no Ray) and draw their defects")
    q.add_argument("images", nargs="+", help="TIFF or PNG files (page 0 of a multi-page TIFF)")
    q.add_argument("--run", required=True, help="trained run directory (semray train, or a tune's best/)")
    q.add_argument("--png", metavar="DIR", help="write IMAGE-defects.png overlays into this directory "
                                               "(IMAGE-2-defects.png, ... for a file name given twice)")
    q.add_argument("--json", help="also write every image's score and regions (or why it failed) to this JSON file")
    q.add_argument("--score", choices=SCORE_NAMES,
                   help=f"the score the map, regions and threshold use (default: {DEFAULT_SCORE}, or "
                        f"{FALLBACK_SCORE} for a run trained before it)")
    q.add_argument("--stride", type=positive_int, help="window stride (default: the run's eval.stride, 16)")
    q.add_argument("--threshold", type=finite_float, help="override the run's calibrated threshold")
    q.add_argument("--pixel-map", choices=[*PIXEL_MAPS, "none"],
                   help=f"the per-pixel map the overlays colour (default: {DEFAULT_PIXEL_MAP}, or {FALLBACK_PIXEL_MAP} "
                        "for a run calibrated before it; none: the window grid's, less work)")
    q.add_argument("--gpu", action="store_true", help="score on the GPU (an error if there is none)")
    q.set_defaults(func=cmd_predict)

    x = command("export", parents=[common], help="write a trained run as an ONNX model (image in, score maps out)")
    x.add_argument("--run", required=True, help="trained run directory")
    x.add_argument("--out", required=True, help="the .onnx file to write")
    x.add_argument("--stride", type=positive_int,
                   help="window stride baked into the model (default: the run's eval.stride)")
    x.set_defaults(func=cmd_export)

    g = command("triage", parents=[common], help="one HTML page about a scored archive: counts, failures, "
                                                  "score histogram, the most anomalous images")
    g.add_argument("out_dir", help="a `semray score --out` directory (a path or a URI)")
    g.add_argument("--out", required=True, help="page directory (index.html and its pictures)")
    g.add_argument("--top", type=non_negative_int, default=50,
                   help="most anomalous images shown with their overlays (0: counts and histogram only)")
    g.set_defaults(func=cmd_triage)

    r = command("report", parents=[common, precision],
                help="an HTML report: the table, curves, histograms and pictures of runs")
    r.add_argument("--run", action="append", required=True, help="run directory (repeat for several models)")
    r.add_argument("--data", required=True, help="data directory whose anomalous images to evaluate on")
    r.add_argument("--out", required=True, help="report directory (index.html and its PNGs)")
    r.add_argument("--stride", type=positive_int, help="window stride (default: each run's eval.stride, 16)")
    r.add_argument("--examples", type=non_negative_int, default=3, help="test images shown stage by stage (0: none)")
    r.add_argument("--gpu", action="store_true", help="score on the GPU (an error if there is none)")
    r.set_defaults(func=cmd_report)

    d = command("demo", parents=[common, precision], help="synthetic data -> train AE, DAE, CVAE -> the 3x3 table")
    d.add_argument("--out", default="demo", help="directory for the synthetic data and the three runs")
    d.add_argument("--config", help="YAML replacing the demo's small settings")
    d.add_argument("--seed", type=non_negative_int, default=0, help="seed of the synthetic data")
    d.add_argument("--gpu", action="store_true", help="train and score on the GPU")
    d.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.verbosity)
    reuse_freed_memory()
    try:
        return args.func(args)
    except SemrayError as e:  # a mistake the user can fix: one line, no traceback
        print(f"semray {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk, a permission, a file that vanished: not a bug in semray
        print(f"semray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
