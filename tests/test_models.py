"""Unit tests for semray.models: the autoencoder registry, the Remez denoiser and the detector."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semray.config import DenoiserConfig, ModelConfig
from semray.data.patches import denormalize_patches, normalize_patches
from semray.models import (
    AUTOENCODERS,
    AnomalyDetector,
    ConvAutoencoder,
    ConvVAE,
    Denoiser,
    DenoisingAutoencoder,
    create_autoencoder,
    create_denoiser,
)
from semray.models.losses import LOSSES, patch_loss
from semray.scores import SCORE_NAMES, feature_score, reconstruction_score, smooth_score, structural_score

SMALL = dict(width=8, latent_dim=16)
KINDS = sorted(AUTOENCODERS)


def small_cfg(kind: str = "ae", **kw) -> ModelConfig:
    return ModelConfig(kind=kind, **{**SMALL, **kw})


def batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def conv_param_count(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
               for p in m.parameters())


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ---------------------------------------------------------------- registry and autoencoders
def test_registry_contents():
    assert AUTOENCODERS == {"ae": ConvAutoencoder, "dae": DenoisingAutoencoder, "cvae": ConvVAE}


@pytest.mark.parametrize("kind", KINDS)
def test_create_autoencoder_returns_registered_class(kind):
    model = create_autoencoder(small_cfg(kind))
    assert type(model) is AUTOENCODERS[kind]
    assert model.cfg.kind == kind


@pytest.mark.parametrize("channels_last", [False, True])
def test_latent_deconv_is_the_transposed_convolution_it_replaces(channels_last):
    """The decoder's first layer holds only the taps a 1 x 1 code reaches and computes it as a dense
    layer (for speed): loaded from a full kernel (as a run trained before it is), its outputs and
    gradients must be the transposed convolution's, and the kernel's other taps get no gradient
    there, for the default and odd geometries, in either memory format."""
    from semray.models.autoencoders import LatentDeconv

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for k, stride, pad, out_pad in ((5, 2, 2, 1), (3, 1, 0, 0), (4, 2, 1, 0)):
        plain = nn.ConvTranspose2d(6, 5, k, stride=stride, padding=pad, output_padding=out_pad)
        fast = LatentDeconv(6, 5, k, stride=stride, padding=pad, output_padding=out_pad)
        fast.load_state_dict(plain.state_dict())
        fast, plain = fast.to(memory_format=fmt), plain.to(memory_format=fmt)
        x = torch.randn(3, 6, 1, 1, generator=torch.Generator().manual_seed(k))
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fast(xa), plain(xb)
        assert ya.shape == yb.shape
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(yb)
        (ya * g).sum().backward()
        (yb * g).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        o = fast.out_size
        taps = plain.weight.grad[:, :, pad:pad + o, pad:pad + o]
        torch.testing.assert_close(fast.weight.grad, taps)
        assert plain.weight.grad.abs().sum() == pytest.approx(taps.abs().sum().item())  # the rest is 0
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad)
    with pytest.raises(ValueError, match="1 x 1"):
        fast(torch.randn(2, 6, 3, 3))


@pytest.mark.parametrize("kind", KINDS)
def test_an_autoencoder_saved_with_the_full_first_kernel_loads_and_scores_the_same(kind):
    """Runs trained before LatentDeconv hold its weight as the full 5 x 5 kernel."""
    model = create_autoencoder(small_cfg(kind)).eval()
    state = model.state_dict()
    w = state["decoder.1.weight"]
    full = torch.randn(*w.shape[:2], 5, 5)
    full[:, :, 2:4, 2:4] = w
    old = {**state, "decoder.1.weight": full}
    again = create_autoencoder(small_cfg(kind)).eval()
    again.load_state_dict(old)
    x = batch()
    torch.testing.assert_close(again(x), model(x))


def test_a_run_saved_before_the_memory_bank_and_the_texture_model_loads_and_scores():
    """model.pt of the first runs: weights and normalisation only, none of what later versions added
    (the memory bank and its sources, the fused score's statistics, the texture and defect models)."""
    from semray.config import Config
    from semray.runs import detector_from_state, model_state

    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8}})
    state = model_state(cfg, {"mode": "patch", "mean": 0.5, "std": 0.25},
                        create_autoencoder(cfg.model).state_dict(), create_denoiser(cfg.denoiser).state_dict())
    for key in ("memory_bank", "memory_bank_source", "memory_bank_images", "score_stats", "texture", "defects"):
        del state[key]
    detector, _ = detector_from_state(state, warn=False)
    assert detector.memory_bank.numel() == 0 and detector.texture is None and len(detector.bank_source) == 0
    scores = detector(torch.rand(4, 1, 32, 32))["scores"]
    assert scores["reconstruction"].shape == (4,) and not scores["knn"].any()


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", KINDS)
def test_autoencoder_output_shape_and_training_loss(kind, size):
    torch.manual_seed(0)
    model = create_autoencoder(small_cfg(kind), patch_size=size)
    x = batch(4, size)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == x.shape
    model.train()
    assert model(x).shape == x.shape
    model.zero_grad()
    loss = model.training_loss(x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    missing = [name for name, g in grads.items() if g is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    # every weight tensor (biases just before a batch norm legitimately get ~0) receives signal
    dead = [name for name, g in grads.items() if name.endswith("weight") and g.abs().sum() == 0]
    assert not dead, f"zero gradient for {dead}"


@pytest.mark.parametrize("kind", KINDS)
def test_autoencoder_eval_output_deterministic(kind):
    torch.manual_seed(0)
    model = create_autoencoder(small_cfg(kind)).eval()
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind,bn", [("ae", True), ("dae", True), ("cvae", False)])
def test_batch_norm_presence(kind, bn):
    assert has_batch_norm(create_autoencoder(small_cfg(kind))) is bn


@pytest.mark.parametrize("size", [32, 64])
def test_same_conv_capacity_for_all_kinds(size):
    counts = {k: conv_param_count(create_autoencoder(small_cfg(k), patch_size=size)) for k in KINDS}
    assert len(set(counts.values())) == 1, counts
    assert counts["ae"] > 0


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="vae"):
        create_autoencoder(small_cfg("vae"))


@pytest.mark.parametrize("size", [4, 24, 33])
def test_bad_patch_size_raises(size):
    with pytest.raises(ValueError, match="patch size"):
        create_autoencoder(small_cfg("ae"), patch_size=size)


def test_unknown_output_activation_raises():
    with pytest.raises(ValueError, match="relu"):
        create_autoencoder(small_cfg("ae", output="relu"))


@pytest.mark.parametrize("output,lo,hi", [("tanh", -1.0, 1.0), ("sigmoid", 0.0, 1.0)])
def test_output_activation_bounds(output, lo, hi):
    torch.manual_seed(0)
    model = create_autoencoder(small_cfg("ae", output=output, init_std=0.5)).eval()
    with torch.no_grad():
        y = model(batch() * 10)
    assert y.min() >= lo and y.max() <= hi


# ---------------------------------------------------------------- DAE vs AE
def _ae_and_dae(**kw) -> tuple[ConvAutoencoder, DenoisingAutoencoder]:
    torch.manual_seed(0)
    ae = create_autoencoder(small_cfg("ae", **kw))
    dae = create_autoencoder(small_cfg("dae", **kw))
    assert {k: v.shape for k, v in ae.state_dict().items()} == {k: v.shape for k, v in dae.state_dict().items()}
    dae.load_state_dict(ae.state_dict())
    return ae, dae


def test_dae_same_network_as_ae_at_test_time():
    ae, dae = _ae_and_dae()
    ae.eval(), dae.eval()
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(dae(x), ae(x), rtol=0, atol=0)


def test_dae_training_loss_is_ae_loss_on_noisy_input():
    sigma = 0.7
    ae, dae = _ae_and_dae(dae_sigma=sigma)
    x = batch()
    torch.manual_seed(123)
    got = dae.training_loss(x)
    torch.manual_seed(123)
    noisy = x + sigma * torch.randn_like(x)
    expected = F.mse_loss(ae(noisy), x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, ae.training_loss(x))


def test_dae_noisy_target_reconstructs_noisy_patch():
    ae, dae = _ae_and_dae(dae_sigma=0.5, dae_noisy_target=True)
    x = batch()
    torch.manual_seed(5)
    got = dae.training_loss(x)
    torch.manual_seed(5)
    noisy = x + 0.5 * torch.randn_like(x)
    torch.testing.assert_close(got, F.mse_loss(ae(noisy), noisy))


def test_dae_without_noise_is_ae():
    ae, dae = _ae_and_dae(dae_sigma=0.0)
    x = batch()
    torch.testing.assert_close(dae.training_loss(x), ae.training_loss(x))


# ---------------------------------------------------------------- CVAE
def test_cvae_eval_deterministic_unless_sampling_at_test():
    torch.manual_seed(0)
    model = create_autoencoder(small_cfg("cvae")).eval()
    sampling = create_autoencoder(small_cfg("cvae", cvae_sample_at_test=True)).eval()
    sampling.load_state_dict(model.state_dict())
    x = batch()
    with torch.no_grad():
        a, b = model(x), model(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        mean, _ = model.encode(x)
        torch.testing.assert_close(a, model.decoder(mean), rtol=0, atol=0)
        s1, s2 = sampling(x), sampling(x)
    assert not torch.equal(s1, s2)


def test_cvae_training_mode_forward_samples():
    torch.manual_seed(0)
    model = create_autoencoder(small_cfg("cvae")).train()
    x = batch()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_cvae_encode_splits_latent():
    torch.manual_seed(0)
    model = create_autoencoder(small_cfg("cvae"))
    mean, logvar = model.encode(batch(3))
    assert mean.shape == logvar.shape == (3, SMALL["latent_dim"])


def _cvae_loss(model: ConvVAE, x: torch.Tensor, beta: float, seed: int) -> torch.Tensor:
    model.cfg = dataclasses.replace(model.cfg, cvae_beta=beta)
    torch.manual_seed(seed)
    return model.training_loss(x)


def test_cvae_training_loss_includes_kl_term():
    torch.manual_seed(0)
    model = create_autoencoder(small_cfg("cvae", init_std=0.2))
    x = batch()
    loss0 = _cvae_loss(model, x, 0.0, seed=9)
    loss10 = _cvae_loss(model, x, 10.0, seed=9)
    assert not torch.allclose(loss0, loss10)
    # the difference is exactly beta * KL / pixels, with the textbook Gaussian KL
    with torch.no_grad():
        mean, logvar = model.encode(x)
        kl = (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(1)).mean()
    assert kl > 0
    torch.testing.assert_close(loss10 - loss0, 10.0 * kl / x[0].numel(), rtol=1e-4, atol=1e-6)
    # and beta=0 leaves the per-pixel reconstruction error of a sampled latent
    torch.manual_seed(9)
    mean, logvar = model.encode(x)
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
    rec = (model.decoder(z) - x).pow(2).flatten(1).sum(1).mean() / x[0].numel()
    torch.testing.assert_close(loss0, rec)


# ---------------------------------------------------------------- denoiser
def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_denoiser_default_is_remez_20_layers_of_64_channels():
    model = Denoiser()
    convs = _convs(model)
    assert len(convs) == 20
    assert convs[0].in_channels == 1
    assert all(c.out_channels == 64 for c in convs[:-1])  # 63 features + 1 mask channel
    assert all(c.in_channels == 63 for c in convs[1:])
    assert convs[-1].out_channels == 1  # the last layer only emits its mask channel
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert not has_batch_norm(model)


@pytest.mark.parametrize("depth", [2, 3, 7])
def test_denoiser_conv_count_equals_depth(depth):
    assert len(_convs(Denoiser(DenoiserConfig(depth=depth, width=8)))) == depth


@pytest.mark.parametrize("depth,width", [(1, 8), (3, 1)])
def test_denoiser_rejects_degenerate_shapes(depth, width):
    with pytest.raises(ValueError):
        Denoiser(DenoiserConfig(depth=depth, width=width))


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 1, 17, 23), (1, 1, 64, 40)])
def test_denoiser_smooth_is_input_plus_mask(shape):
    torch.manual_seed(0)
    model = create_denoiser(DenoiserConfig(depth=3, width=8), init_std=0.3)
    x = torch.randn(*shape)
    mask, smooth = model(x)
    assert mask.shape == smooth.shape == (shape[0], 1, *shape[2:])
    assert torch.equal(smooth, x + mask)
    assert mask.abs().sum() > 0


def test_denoiser_mask_is_sum_of_first_channels():
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(depth=4, width=6), init_std=0.3)
    for layer in model.layers:  # non-zero biases so their routing is checked too
        nn.init.normal_(layer.bias, 0.0, 0.1)
    x = torch.randn(2, 1, 12, 12)
    h, expected = x, torch.zeros_like(x)
    for layer in model.layers[:-1]:
        out = F.conv2d(h, layer.weight, layer.bias, padding=1)
        expected = expected + out[:, :1]
        h = F.relu(out[:, 1:])
    expected = expected + F.conv2d(h, model.layers[-1].weight, model.layers[-1].bias, padding=1)
    mask, smooth = model(x)
    torch.testing.assert_close(mask, expected)


def test_create_denoiser_init_std():
    torch.manual_seed(0)
    model = create_denoiser(DenoiserConfig(depth=3, width=32), init_std=0.05)
    assert model.layers[1].weight.std().item() == pytest.approx(0.05, rel=0.1)
    assert all((layer.bias == 0).all() for layer in model.layers)


def test_denoiser_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(depth=3, width=8), init_std=0.3)
    x = torch.randn(2, 1, 16, 16)
    mask, smooth = model(x)
    F.mse_loss(smooth, torch.zeros_like(x)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------- detector
def _detector(kind: str = "dae", normalization: str = "patch") -> AnomalyDetector:
    torch.manual_seed(0)
    ae = create_autoencoder(small_cfg(kind, init_std=0.1))
    den = create_denoiser(DenoiserConfig(depth=3, width=8), init_std=0.1)
    return AnomalyDetector(ae, den, normalization, mean=0.4, std=0.2).eval()


def _raw(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("normalization", ["patch", "image"])
@pytest.mark.parametrize("kind", KINDS)
def test_detector_scores_consistent_with_score_functions(kind, normalization):
    det = _detector(kind, normalization)
    raw = _raw()
    out = det(raw)
    x = normalize_patches(raw, normalization, 0.4, 0.2)
    with torch.no_grad():
        rec = det.autoencoder(x)
        mask, smooth = det.denoiser(rec)
    torch.testing.assert_close(out["x"], x)
    torch.testing.assert_close(out["feature_mask"], mask)
    in_image = {k: denormalize_patches(v, raw, normalization, 0.4, 0.2) for k, v in (("rec", rec), ("smooth", smooth))}
    expected = {"reconstruction": reconstruction_score(x, rec), "smooth": smooth_score(x, smooth),
                "feature": feature_score(x, mask), "ssim_reconstruction": structural_score(raw, in_image["rec"]),
                "ssim_smooth": structural_score(raw, in_image["smooth"]),
                "knn": torch.zeros(5),  # no memory bank: 0 (semray.scores.knn_score)
                "fused": torch.zeros(5)}  # no score statistics: 0 (semray.models.fusion)
    assert set(expected) == set(SCORE_NAMES)
    for name, value in expected.items():
        assert out["scores"][name].shape == (5,)
        torch.testing.assert_close(out["scores"][name], value)
    scores = det.scores(raw)
    assert set(scores) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(scores[name], value)
    assert not any(v.requires_grad for v in [*out["scores"].values(), out["x"], out["feature_mask"]])


def test_detector_forward_returns_all_stages():
    det = _detector("dae")
    raw = _raw()
    out = det(raw)
    x = normalize_patches(raw, "patch")
    with torch.no_grad():
        rec = det.autoencoder(x)
        mask, smooth = det.denoiser(rec)
    stages = {"x": x, "reconstruction": rec, "feature_mask": mask, "smooth": smooth}
    tensors = [t for t in out.values() if torch.is_tensor(t)]
    for name, stage in stages.items():
        assert any(t.shape == stage.shape and torch.allclose(t, stage) for t in tensors), f"stage {name} missing"


# ---------------------------------------------------------------- the training loss (model.loss)
def test_mse_loss_is_the_studys_l2():
    a, b = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
    torch.testing.assert_close(patch_loss(a, b, "mse").mean(), F.mse_loss(a, b))


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_is_zero_for_a_perfect_output_and_positive_otherwise(loss):
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert patch_loss(x, x, loss).abs().max() < 1e-5
    assert (patch_loss(x + 0.3 * torch.randn_like(x), x, loss) > 0.01).all()


def test_ssim_loss_charges_a_structural_change_more_than_an_offset_of_equal_l2():
    """What SSIM is for: a blurred patch loses structure, a brightened one only its mean."""
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    offset = x + (blurred - x).pow(2).mean().sqrt()  # the same mean squared error
    torch.testing.assert_close(patch_loss(offset, x, "mse"), patch_loss(blurred, x, "mse"), rtol=0.2, atol=0)
    assert (patch_loss(blurred, x, "ssim") > 2 * patch_loss(offset, x, "ssim")).all()


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_model_trains_with_every_loss(kind, loss):
    torch.manual_seed(0)
    model = create_autoencoder(ModelConfig(kind=kind, width=8, latent_dim=16, loss=loss))
    value = model.training_loss(torch.randn(4, 1, 32, 32))
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_config_offers_exactly_the_losses_there_are():
    from semray.config import CHOICES

    assert CHOICES["model.loss"] == LOSSES


def _with_memory_bank(*shapes: tuple[int, int]):
    """An untrained AE detector with a memory bank of random images of these shapes -> (the
    detector without and with the bank, the images, the bank, the normalisation, the rng)."""
    from semray.models.memory import build_memory_bank

    det = _detector("ae")
    rng = np.random.default_rng(0)
    images = [rng.random(shape, dtype=np.float32) for shape in shapes]
    norm = {"mode": "patch", "mean": 0.4, "std": 0.2}
    bank = build_memory_bank(det.autoencoder, images, norm, 32, max_windows=1000)
    with_bank = AnomalyDetector(det.autoencoder, det.denoiser, "patch", 0.4, 0.2, memory_bank=bank).eval()
    return det, with_bank, images, bank, norm, rng


def test_the_memory_bank_holds_normal_windows_and_knn_finds_them():
    from semray.data.patches import iter_patch_batches
    from semray.models.memory import BANK_STRIDE, build_memory_bank

    det, with_bank, images, bank, norm, rng = _with_memory_bank((64, 96), (48, 48))
    windows = sum(len(ys) for image in images for _, ys, _ in iter_patch_batches(image, 32, BANK_STRIDE, 999))
    assert bank.dtype == torch.float16 and bank.shape == (windows, 4 * 8 * 4 * 4)  # every window, 4x4 x 4*width
    torch.testing.assert_close(bank.float().norm(dim=1), torch.ones(windows), atol=1e-2, rtol=0)
    assert len(build_memory_bank(det.autoencoder, images, norm, 32, max_windows=5)) == 5  # a random subset
    assert build_memory_bank(det.autoencoder, images, norm, 32, max_windows=0).numel() == 0

    seen = torch.from_numpy(images[0][:32, :32].copy())[None, None]  # the bank's first window
    unseen = torch.from_numpy(np.full((32, 32), 0.5, np.float32) + rng.normal(0, 0.01, (32, 32)).astype(np.float32))
    knn = with_bank.scores(torch.cat([seen, unseen[None, None]]))["knn"]
    assert knn[0] < 1e-2 < knn[1]  # a window the bank holds is at distance ~0 (float16 storage)


def test_calibration_scores_a_training_image_without_its_own_windows_in_the_bank():
    """bank_without: a training image (recognised by its pixels' fingerprint) meets the bank of the
    other training images' windows, as a new normal image would; any other image, the whole bank.
    Its own windows would otherwise be at knn distance ~0 from themselves."""
    from semray.models.memory import bank_without, build_memory_bank, image_fingerprint

    det, with_bank, images, bank, norm, rng = _with_memory_bank((64, 96), (48, 48))
    again, source = build_memory_bank(det.autoencoder, images, norm, 32, max_windows=1000, with_sources=True)
    assert torch.equal(again, bank) and source.dtype == torch.int16 and source.tolist() == sorted(source.tolist())
    assert set(source.tolist()) == {0, 1}
    subset, sub_source = build_memory_bank(det.autoencoder, images, norm, 32, max_windows=5, with_sources=True)
    assert torch.equal(subset, build_memory_bank(det.autoencoder, images, norm, 32, max_windows=5))
    assert len(sub_source) == 5
    with_bank.bank_source, with_bank.bank_images = source, [image_fingerprint(im) for im in images]
    first = torch.from_numpy(images[0][:32, :32].copy())[None, None]  # a window the bank holds
    assert with_bank.scores(first)["knn"] < 1e-2
    with bank_without(with_bank, images[0]):
        assert len(with_bank.memory_bank) == int((source == 1).sum())
        assert with_bank.scores(first)["knn"] > 1e-2
    assert torch.equal(with_bank.memory_bank, bank.float())  # put back
    with bank_without(with_bank, rng.random((40, 40), dtype=np.float32)):  # not a training image
        assert torch.equal(with_bank.memory_bank, bank.float())
    with_bank.bank_source = torch.zeros_like(source)  # a bank of one image's windows: nothing to leave out
    with bank_without(with_bank, images[0]):
        assert len(with_bank.memory_bank) == len(bank)


def test_the_fused_score_is_the_weighted_sum_of_scores_standardised_on_normal_windows():
    from semray.models.fusion import score_statistics
    from semray.scores import FUSED_SCORE, FUSION_WEIGHTS

    _, det, images, _, _, _ = _with_memory_bank((96, 128), (64, 64))
    stats = score_statistics(det, images, seed=0)
    assert set(stats) == set(SCORE_NAMES) - {FUSED_SCORE}
    assert all(std > 0 for _, std in stats.values())
    # none of the windows it measures is one the bank holds (those have knn 0): half a stride off
    assert stats["knn"][0] > 1e-3
    assert score_statistics(det, images, max_windows=7, seed=0) != stats  # a random subset
    # training images too small to shift half a stride (the loader takes 32 px): their windows as
    # they are, rather than a crash at the end of a whole training
    small = score_statistics(det, [im[:32, :80] for im in images], seed=0)
    assert set(small) == set(stats) and all(np.isfinite(m) for m, _ in small.values())

    assert FUSED_SCORE not in det.available_scores and "knn" in det.available_scores  # a bank, no statistics
    det.set_score_stats(stats)
    assert det.available_scores == SCORE_NAMES
    raw = _raw()
    scores = det.scores(raw)
    expected = sum(w * (scores[k] - stats[k][0]) / stats[k][1] for k, w in FUSION_WEIGHTS.items())
    torch.testing.assert_close(scores[FUSED_SCORE], expected)
    # the normal windows it was measured on average to ~0 (each standardised score has mean 0 there)
    from semray.data.patches import iter_patch_batches

    windows = np.concatenate([p for image in images for p, _, _ in iter_patch_batches(image[8:, 8:], 32, 16, 999,
                                                                                       cover_edges=False)])
    fused_normal = det.scores(torch.from_numpy(windows).unsqueeze(1))[FUSED_SCORE]
    assert abs(float(fused_normal.mean())) < 1e-3


def test_the_fused_window_score_gains_the_texture_maps_window_maxima_standardised_on_normal_windows():
    """A run with a texture model: its statistics hold the texture map's window means and maxima on
    normal windows, and score_image adds the maxima, standardised, to the forward pass's fused score
    with TEXTURE_MAX_FUSION_WEIGHT; a run whose statistics predate the maxima keeps the means with
    TEXTURE_FUSION_WEIGHT (it scores as it always did); a score_image asked for another score
    computes neither."""
    from semray.maps import score_image
    from semray.models.fusion import score_statistics
    from semray.scores import FUSED_SCORE, TEXTURE, TEXTURE_FUSION_WEIGHT, TEXTURE_MAX, TEXTURE_MAX_FUSION_WEIGHT
    from semray.texture import TextureModel, window_statistics

    _, det, images, _, _, _ = _with_memory_bank((96, 128), (80, 96))
    plain = score_statistics(det, images, seed=0)
    det.texture = TextureModel.fit(images, components=2, pixels=4000)
    stats = score_statistics(det, images, seed=0)
    assert set(stats) == set(plain) | {TEXTURE, TEXTURE_MAX} and stats[TEXTURE][1] > 0 and stats[TEXTURE_MAX][1] > 0
    assert stats[TEXTURE_MAX][0] > stats[TEXTURE][0]  # a window's maximum is at least its mean
    assert {k: v for k, v in stats.items() if k not in (TEXTURE, TEXTURE_MAX)} == plain  # the others' as before
    det.set_score_stats(stats)
    image = np.random.default_rng(5).random((72, 100), dtype=np.float32)
    scored = score_image(det, image, 16)
    texture = window_statistics(det.texture, image, scored["ys"], scored["xs"], 32)
    np.testing.assert_allclose(scored[TEXTURE], texture["mean"])
    np.testing.assert_allclose(scored[TEXTURE_MAX], texture["max"])
    windows = det.scores(torch.from_numpy(np.stack([image[y:y + 32, x:x + 32] for y, x in zip(scored["ys"],
                                                                                             scored["xs"])]))[:, None])
    mean, std = stats[TEXTURE_MAX]
    np.testing.assert_allclose(scored[FUSED_SCORE], windows[FUSED_SCORE].numpy() + TEXTURE_MAX_FUSION_WEIGHT
                               * (texture["max"] - mean) / std, rtol=1e-5, atol=1e-5)
    assert score_image(det, image, 16, names=[FUSED_SCORE])[FUSED_SCORE].tolist() == scored[FUSED_SCORE].tolist()
    other = score_image(det, image, 16, names=["ssim_reconstruction"])
    assert FUSED_SCORE not in other and TEXTURE not in other
    # a run measured before the maxima existed: the means, as it was calibrated
    det.set_score_stats({k: v for k, v in stats.items() if k != TEXTURE_MAX})
    mean, std = stats[TEXTURE]
    np.testing.assert_allclose(score_image(det, image, 16)[FUSED_SCORE], windows[FUSED_SCORE].numpy()
                               + TEXTURE_FUSION_WEIGHT * (texture["mean"] - mean) / std, rtol=1e-5, atol=1e-5)
    det.texture = None  # a run without a texture model (or trained before it): the windows' part alone
    np.testing.assert_allclose(score_image(det, image, 16)[FUSED_SCORE], windows[FUSED_SCORE].numpy(), rtol=1e-6)


class _NoDenoiser(nn.Module):
    def forward(self, x):
        raise AssertionError("the denoiser ran")


def test_scores_that_do_not_need_the_denoiser_skip_it_and_equal_the_full_pass():
    from semray.models.fusion import score_statistics
    from semray.scores import DENOISER_SCORES, FUSED_SCORE, needs_denoiser

    assert not needs_denoiser([FUSED_SCORE]) and not needs_denoiser(["ssim_reconstruction", "knn"])
    assert all(needs_denoiser([k]) for k in DENOISER_SCORES) and needs_denoiser(["knn", "feature"])
    _, det, images, _, _, _ = _with_memory_bank((96, 128), (64, 64))
    det.set_score_stats(score_statistics(det, images, seed=0))
    raw = _raw()
    full = det.scores(raw)
    assert set(det.scores(raw, names=["smooth"])) == set(SCORE_NAMES)  # needs it: the full pass
    det.denoiser = _NoDenoiser()
    light = det.scores(raw, names=[FUSED_SCORE])
    assert set(light) == set(SCORE_NAMES) - DENOISER_SCORES
    for name, value in light.items():
        torch.testing.assert_close(value, full[name])
    out = det(raw, denoise=False)
    assert "smooth" not in out and "feature_mask" not in out
