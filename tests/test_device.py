"""Precision and memory format (semray.device): auto's choice, explicit bf16's warning and error,
and bf16 scores close to fp32's. No Ray; capability probes are monkeypatched, never the math."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from semray import device as dev
from semray.config import Config
from semray.data.synth import SynthConfig, generate_image
from semray.models import AnomalyDetector, create_autoencoder, create_denoiser


@pytest.fixture
def fast_cpu(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))


@pytest.fixture
def slow_cpu(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    dev._warned.clear()


def test_auto_picks_bf16_only_where_the_cpu_has_fast_bf16(fast_cpu):
    p = dev.resolve_precision("auto", "cpu")
    assert p.name == "bf16" and "AVX512_BF16" in p.reason


def test_auto_picks_fp32_on_a_cpu_without_fast_bf16_and_says_why(slow_cpu):
    p = dev.resolve_precision("auto", "cpu")
    assert p.name == "fp32" and "no AMX-BF16 or AVX512-BF16" in p.reason


def test_amx_counts_as_fast_bf16(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    assert dev.resolve_precision("auto", "cpu").name == "bf16"


def test_explicit_bf16_where_it_is_slow_runs_and_warns_once(slow_cpu, caplog):
    with caplog.at_level(logging.WARNING, logger="semray"):
        first = dev.resolve_precision("bf16", "cpu")
        second = dev.resolve_precision("bf16", "cpu")
    assert first.name == second.name == "bf16"
    warnings = [r for r in caplog.records if "expect it to be slower" in r.getMessage()]
    assert len(warnings) == 1


def test_bf16_on_a_device_without_any_bf16_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(dev, "bf16_speed", lambda device: (False, False, "this GPU does not support bf16"))
    with pytest.raises(ValueError, match="does not support bf16; use --precision fp32"):
        dev.resolve_precision("bf16", "cpu")
    assert dev.resolve_precision("auto", "cpu").name == "fp32"  # auto never fails


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        dev.resolve_precision("fp16", "cpu")


def test_cli_reports_a_device_without_bf16_in_one_line(monkeypatch, untrained_run, synth_data, capsys):
    from conftest import main_in_process

    monkeypatch.setattr(dev, "bf16_speed", lambda device: (False, False, "this device does not support bf16"))
    code, _, err = main_in_process(capsys, "evaluate", "--run", untrained_run, "--data", synth_data,
                                   "--precision", "bf16")
    assert code == 2
    assert err.strip().splitlines() == [
        "semray evaluate: error: --precision bf16: this device does not support bf16; use --precision fp32 (or auto)"]


def test_memory_format_per_use(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert dev.memory_format("cpu", "score") == torch.channels_last
    assert dev.memory_format("cpu", "autoencoder") == torch.channels_last
    assert dev.memory_format("cpu", "denoiser") == torch.contiguous_format  # measured slower in NHWC
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}))
    assert dev.memory_format("cpu", "denoiser") == torch.channels_last  # with AMX, NHWC is faster
    # a GPU scores in NHWC (tensor cores) and trains in the default layout (bench/RESULTS.md, H200)
    assert dev.memory_format("cuda", "score") == torch.channels_last
    assert dev.memory_format("cuda", "autoencoder") == dev.memory_format("cuda", "denoiser") == torch.contiguous_format
    with pytest.raises(ValueError):
        dev.memory_format("cpu", "train")


def test_auto_on_a_gpu_trains_the_autoencoder_in_fp32_and_the_rest_in_bf16(monkeypatch):
    monkeypatch.setattr(dev, "bf16_speed", lambda device: (True, True, "NVIDIA H200 has bf16 tensor cores"))
    assert dev.resolve_precision("auto", "cuda").name == "bf16"
    assert dev.resolve_precision("auto", "cuda", use="denoiser").name == "bf16"
    p = dev.resolve_precision("auto", "cuda", use="autoencoder")  # launch-bound: bf16's casts cost more there
    assert p.name == "fp32" and "kernel launches" in p.reason
    assert dev.resolve_precision("bf16", "cuda", use="autoencoder").name == "bf16"  # as asked
    # a CPU with fast bf16 trains in it too: there the arithmetic, not the launches, is the cost
    monkeypatch.setattr(dev, "bf16_speed", lambda device: (True, True, "this CPU has AMX_BF16"))
    assert dev.resolve_precision("auto", "cpu", use="denoiser").name == "bf16"
    with pytest.raises(ValueError, match="unknown use"):
        dev.resolve_precision("auto", "cpu", use="train")


def _detector(kind: str, precision: str, fmt=torch.contiguous_format, init_std: float = 0.02) -> AnomalyDetector:
    cfg = Config.from_dict({"model": {"kind": kind, "width": 8, "latent_dim": 16, "init_std": init_std},
                            "denoiser": {"depth": 3, "width": 8}})
    torch.manual_seed(0)
    ae, den = create_autoencoder(cfg.model, 32), create_denoiser(cfg.denoiser, init_std=0.1)
    return AnomalyDetector(ae, den, precision=dev.Precision(precision, "test"),
                           memory_format=fmt).to(memory_format=fmt).eval()


@pytest.mark.parametrize("kind", ["ae", "dae", "cvae"])
def test_bf16_scores_are_close_to_fp32_and_come_back_in_fp32(kind):
    # SEM-like windows and an autoencoder whose output depends on its input: with uniform noise and
    # the 0.02 init, every per-patch-normalised window scores 1 + |AE(x)|^2 = 1 to 1e-7, so the
    # rank check below would compare fp32 rounding noise, not what bf16 does to a ranking
    image, _ = generate_image(np.random.default_rng(0), SynthConfig(), defects=True)
    raw = torch.from_numpy(image).unfold(0, 32, 24).unfold(1, 32, 24).reshape(-1, 1, 32, 32)[:48]
    fp32 = _detector(kind, "fp32", init_std=0.1).scores(raw)
    bf16 = _detector(kind, "bf16", init_std=0.1).scores(raw)
    for name in fp32:
        if name in ("reconstruction", "smooth", "feature", "ssim_reconstruction"):
            assert fp32[name].std() > 1e-4 * fp32[name].mean().abs(), name  # there is a ranking to keep
        assert bf16[name].dtype == torch.float32
        assert torch.allclose(bf16[name], fp32[name], rtol=0.05, atol=1e-3), name
        ranks = [np.argsort(np.argsort(s[name].numpy())) for s in (fp32, bf16)]
        assert np.corrcoef(*ranks)[0, 1] > 0.98, name  # the ranking (what AUROC sees) is kept


def test_channels_last_scores_equal_contiguous():
    raw = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    a = _detector("ae", "fp32").scores(raw)
    b = _detector("ae", "fp32", torch.channels_last).scores(raw)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
