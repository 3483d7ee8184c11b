"""Leak-free augmentation (core.augment, EDM's AugmentPipe): each transform against a closed form,
the identity exactly, inverses up to interpolation, and its path into the train step and the
network's input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import augment

RNG = np.random.default_rng(0)
IMAGES = jnp.asarray(RNG.normal(size=(4, 12, 10, 3)), jnp.float32)


def _warp(images, **params):
    p = augment.identity_params(images.shape[0])
    p.update({k: jnp.full(images.shape[0], v, jnp.float32) for k, v in params.items()})
    return np.asarray(augment.warp(images, augment.inverse_matrix(p)))


def _ramp(h, w, a=0.3, b=-0.7, d=0.1):
    """The linear image a (x - cx) + b (y - cy) + d, x the column, y the row: bilinear sampling
    reproduces it exactly inside the image."""
    rows, cols = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2,
                             indexing="ij")
    return (a * cols + b * rows + d)[None, :, :, None].astype(np.float32)


@pytest.mark.parametrize("name", augment.TRANSFORMS)
def test_every_transform_with_its_identity_parameters_is_exactly_the_identity(name):
    images, labels = augment.augment(IMAGES, jax.random.key(1), p=0.0, transforms=(name,))
    np.testing.assert_array_equal(np.asarray(images), np.asarray(IMAGES))
    np.testing.assert_array_equal(np.asarray(labels), np.zeros((4, augment.NUM_LABELS)))
    # with p = 1 the transform happens (xflip always; the others at nonzero draws)
    images, labels = augment.augment(IMAGES, jax.random.key(1), p=1.0, transforms=(name,))
    assert np.all(np.abs(np.asarray(labels)).sum(-1) > 0)
    assert np.abs(np.asarray(images) - np.asarray(IMAGES)).max() > 0.1


def test_flip_translation_and_quarter_turn_are_the_exact_array_operations():
    x = np.asarray(IMAGES)
    np.testing.assert_array_equal(_warp(IMAGES, xflip=1.0), x[:, :, ::-1])
    shifted = _warp(IMAGES, tx=3.0, ty=-2.0)  # content moves 3 right and 2 up
    np.testing.assert_array_equal(shifted[:, :-2, 3:], x[:, 2:, :-3])
    # the borders are mirrored (whole-sample): column -1 is column 1
    np.testing.assert_array_equal(shifted[:, :-2, 2], x[:, 2:, 1])
    square = IMAGES[:, :10]
    np.testing.assert_allclose(_warp(square, theta=math.pi / 2),
                               np.rot90(np.asarray(square), -1, axes=(1, 2)), atol=1e-5)


def test_scaling_and_anisotropy_of_a_linear_image_match_the_closed_form():
    """The forward map scales coordinates about the centre, so out(x, y) = in(x / s, y / s):
    a ramp's slopes divide by s (and by a, 1 / a for the anisotropic scale)."""
    h, w, s, a = 9, 11, 2 ** 0.6, 2 ** 0.3
    ramp = jnp.asarray(_ramp(h, w))
    np.testing.assert_allclose(_warp(ramp, log2_scale=0.6), _ramp(h, w, 0.3 / s, -0.7 / s),
                               atol=1e-5)
    # y is stretched by 1 / a < 1, so it samples rows outside the image: check the inner rows
    out, want = _warp(ramp, log2_aniso=0.3), _ramp(h, w, 0.3 / a, -0.7 * a)
    np.testing.assert_allclose(out[:, 2:-2], want[:, 2:-2], atol=1e-5)


def test_each_geometric_transform_is_undone_by_its_inverse_up_to_interpolation():
    h = w = 24
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    blob = np.exp(-((rows - 11.0) ** 2 + (cols - 13.0) ** 2) / 32.0)  # smooth, away from borders
    # what never left the image: the corners come back holding mirrored padding
    inner = ((rows - 11.5) ** 2 + (cols - 11.5) ** 2 <= 8.0 ** 2)[None, :, :, None]
    image = jnp.asarray(blob[None, :, :, None], jnp.float32)
    cases = [dict(theta=0.7), dict(log2_scale=0.25), dict(log2_aniso=-0.2),
             dict(theta=-2.0, log2_scale=-0.2, log2_aniso=0.15, tx=2.0, ty=-1.0, xflip=1.0)]
    for params in cases:
        forward = augment.identity_params(1)
        forward.update({k: jnp.full(1, v, jnp.float32) for k, v in params.items()})
        moved = augment.warp(image, augment.inverse_matrix(forward))
        # the inverse of M is M^-1: warp by the forward matrix itself
        m = jnp.linalg.inv(augment.inverse_matrix(forward))
        back = np.asarray(augment.warp(moved, m))
        assert np.abs(np.asarray(moved) - blob[None, :, :, None]).max() > 0.1, params
        assert np.abs(back - blob[None, :, :, None])[inner].max() < 0.035, params


def test_the_labels_encode_the_parameters_and_vanish_for_the_identity():
    p = augment.identity_params(2)
    np.testing.assert_array_equal(np.asarray(augment.labels(p, 12, 10)), 0.0)
    p.update(xflip=jnp.array([1.0, 0.0]), tx=jnp.array([5.0, 0.0]), ty=jnp.array([0.0, -3.0]),
             theta=jnp.array([math.pi / 2, 0.0]), log2_scale=jnp.array([0.0, 0.5]))
    np.testing.assert_allclose(np.asarray(augment.labels(p, 12, 10)),
                               [[1, 0.5, 0, 0, 1, -1, 0], [0, 0, -0.25, 0.5, 0, 0, 0]],
                               atol=1e-6)


def test_unknown_transforms_and_bad_probabilities_are_refused():
    from diffjax.options import OptionError
    from diffjax.settings import DataOptions

    with pytest.raises(ValueError, match="unknown transforms"):
        augment.sample_params(jax.random.key(0), 2, 8, 8, 0.5, ("shear",))
    with pytest.raises(OptionError, match="augment_p"):
        DataOptions(augment_p=1.5)
    with pytest.raises(OptionError, match="'shear'; allowed: xflip, translate"):
        DataOptions(augment_p=0.2, augment_transforms=("xflip", "shear"))


def test_an_augmented_run_resumes_bit_exactly_and_samples_with_the_identity_labels(data_dir,
                                                                                   tmp_path):
    """The augmentation draws from the step's key inside the jitted step: 4 steps in one go equal
    2, a restart and 2 more. The U-Net embeds the 7 labels, and sampling feeds it the identity's
    (zero) labels."""
    from conftest import tiny_config, train_run

    from diffjax.experiment import Experiment

    config = tiny_config(data_dir, **{"data.augment_p": 0.5})
    straight = train_run(config, str(tmp_path / "straight"))
    config.training.num_steps = 2
    train_run(config, str(tmp_path / "resumed"))
    config.training.num_steps = 4
    resumed = train_run(config, str(tmp_path / "resumed"))
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    exp = Experiment(config)
    first = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(straight.params)
             if "conv_in" in jax.tree_util.keystr(path) and "kernel" in
             jax.tree_util.keystr(path)][0]
    assert first.shape[-2] == 1  # the U-Net embeds the labels with the noise level (EDM)
    embed = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(straight.params)
             if "augment_embed" in jax.tree_util.keystr(path)]
    assert [e.shape for e in embed] == [(augment.NUM_LABELS, 32)]  # onto the ch-wide sinusoid
    cond = exp.conditioning.from_labels(jnp.zeros((3,), jnp.int32))
    np.testing.assert_array_equal(np.asarray(cond["augment"]), np.zeros((3, augment.NUM_LABELS)))
    x, t = jnp.zeros((3, 16, 16, 1)), jnp.full((3,), 0.5)
    told = exp.network.apply(straight.params, x, t, {"augment": jnp.ones((3, 7))})
    assert np.abs(np.asarray(told) - np.asarray(exp.network.apply(straight.params, x, t, cond))
                  ).max() > 0  # the labels reach the network


def test_the_leaky_ablation_augments_without_telling_the_network(data_dir):
    """data.augment_labels=False (the ablation that leaks): the step still augments, but the
    network keeps its own input channels and the conditioning carries no labels."""
    from conftest import tiny_config

    from diffjax.experiment import Experiment
    from diffjax.models.network import InputLabels

    told = Experiment(tiny_config(data_dir, **{"data.augment_p": 0.5}))
    untold = Experiment(tiny_config(data_dir, **{"data.augment_p": 0.5,
                                                 "data.augment_labels": False}))
    assert told.network.embedded == ("augment",) and untold.network.embedded == ()
    assert not isinstance(untold.network, InputLabels)
    assert untold._augment() is not None
    assert "augment" not in untold.conditioning.from_labels(jnp.zeros((2,), jnp.int32))


def test_a_network_without_an_augment_embedding_takes_the_labels_as_input_channels(data_dir):
    from conftest import tiny_config

    from diffjax.experiment import Experiment
    from diffjax.models.network import InputLabels

    exp = Experiment(tiny_config(data_dir, **{
        "data.augment_p": 0.5, "model.name": "dit", "model.dit.patch_size": 4,
        "model.dit.hidden_size": 32, "model.dit.depth": 1, "model.dit.num_heads": 2}))
    assert isinstance(exp.network, InputLabels)
    params = jax.eval_shape(exp.network.init, jax.random.key(0))
    [patch] = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
               if "kernel" in jax.tree_util.keystr(path) and len(leaf.shape) == 4]
    assert patch[-2] == 1 + augment.NUM_LABELS


def test_the_leak_meter_reads_orientation_not_interpolation_blur(data_dir):
    """Real held-out digits resampled by the augmentation's own non-orienting warps (scale,
    anisotropy, a slight tilt, a sub-pixel shift) are still upright; turned or mirrored ones are
    not. A meter trained on exact upright digits and warped rotated ones reads blur as rotation."""
    from diffjax.evaluation import digit_classifier

    classifier, _ = digit_classifier.train_orientation_classifier(data_dir, num_steps=400)
    real, _ = digit_classifier._split("mnist_embedded", "train[90%:]", data_dir)
    real = real[:200]
    upright, mirrored, rotated = range(3)

    def read(images):
        return np.bincount(classifier.predict(np.asarray(images)), minlength=3) / len(images)

    def warped(**params):
        out = _warp(jnp.asarray(real, jnp.float32), **params)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    for params in ({"log2_scale": 0.2}, {"log2_scale": -0.2}, {"log2_aniso": 0.2},
                   {"theta": math.radians(10)}, {"tx": 0.5, "ty": 0.5}):
        assert read(warped(**params))[upright] > 0.85, params
    assert read(np.ascontiguousarray(real[:, :, ::-1]))[mirrored] > 0.8
    assert read(np.ascontiguousarray(np.rot90(real, 1, axes=(1, 2))))[rotated] > 0.8
    assert read(warped(theta=math.radians(135)))[rotated] > 0.8
