import numpy as np
import pytest

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.data.synth import SynthConfig, generate_image, write_dataset

from conftest import main_in_process

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


@pytest.mark.parametrize("height, width", [(0, 64), (16, 64), (64, 31), (-64, 64)])
def test_too_small_an_image_is_a_config_error_giving_the_smallest_size(height, width):
    from semray.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 32 x 32 pixels"):
        SynthConfig(height=height, width=width)


def test_small_images_down_to_the_minimum_draw_for_every_seed():
    """A film (up to 80 px) in a smaller image crashed numpy on some seeds (64 x 256 with seed 0)."""
    for height, width in [(32, 32), (48, 64), (64, 256), (256, 40)]:
        cfg = SynthConfig(height=height, width=width)
        for seed in range(4):
            rng = np.random.default_rng(seed)
            for defects in (False, True, True):
                img, mask = generate_image(rng, cfg, defects)
                assert img.shape == mask.shape == (height, width)


def test_synth_flags_out_of_range_are_one_line(tmp_path, capsys):
    code, _, err = main_in_process(capsys, "synth", tmp_path / "d", "--height", 16)
    assert code == 2 and err.count("\n") == 1 and "--height 16" in err and "at least 32 x 32" in err
    assert not (tmp_path / "d").exists()
    for flag in ("--normal", "--anomalous", "--seed"):  # -1 normal images "written", or numpy's seed error
        with pytest.raises(SystemExit) as info:
            main_in_process(capsys, "synth", tmp_path / "d", flag, -1)
        assert info.value.code == 2
        assert f"argument {flag}: expected a whole number >= 0, got '-1'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
