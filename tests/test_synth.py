import numpy as np

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.data.synth import SynthConfig, generate_image, write_dataset

CFG = SynthConfig(height=192, width=256, n_normal=2, n_anomalous=3, seed=7)


def test_deterministic_for_seed():
    a = generate_image(np.random.default_rng(3), CFG, True)
    b = generate_image(np.random.default_rng(3), CFG, True)
    c = generate_image(np.random.default_rng(4), CFG, True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_shapes_range_and_masks():
    rng = np.random.default_rng(0)
    for _ in range(3):
        img, mask = generate_image(rng, CFG, False)
        assert img.shape == mask.shape == (192, 256)
        assert img.dtype == np.float32 and mask.dtype == bool
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert not mask.any()
        assert 0.15 < img.mean() < 0.6  # fibres on a dark background, not blank nor saturated
    cfg = SynthConfig(seed=1)  # default size: defect fraction is specified for it
    rng = np.random.default_rng(cfg.seed)
    for _ in range(6):
        img, mask = generate_image(rng, cfg, True)
        assert 0.008 <= mask.mean() <= 0.08
        assert img[mask].mean() > img[~mask].mean()  # beads/films stand out from the mat


def test_write_dataset_roundtrip(tmp_path):
    root = write_dataset(tmp_path / "syn", CFG)
    assert root == tmp_path / "syn"
    assert sorted(p.name for p in (root / "Normal").iterdir()) == ["SYN0001.tif", "SYN0002.tif"]
    assert (root / "Anomalous" / "gt" / "SYN1003_gt.png").is_file()
    normal = load_normal_images(root)
    anomalous = load_anomalous_images(root)
    assert len(normal) == 2 and len(anomalous) == 3
    assert all(img.shape == (192, 256) for _, img in normal)
    for li in anomalous:
        assert li.image.shape == li.mask.shape == (192, 256) and li.mask.any()
    again = write_dataset(tmp_path / "again", CFG)
    for sub in ("Normal/SYN0001.tif", "Anomalous/images/SYN1002.tif", "Anomalous/gt/SYN1002_gt.png"):
        assert (root / sub).read_bytes() == (again / sub).read_bytes()
