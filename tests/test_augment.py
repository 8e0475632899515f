"""Tests for tf_simclr.data.augment (SPEC §5, quirks Q11/Q12)."""

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.data import augment

SEED = (7, 11)


def _image(h=12, w=10, seed=0):
  return np.random.default_rng(seed).uniform(
      0.0, 1.0, (h, w, 3)).astype(np.float32)


def _uint8(h=40, w=30, channels=3, seed=0):
  return np.random.default_rng(seed).integers(
      0, 256, (h, w, channels)).astype(np.uint8)


def _seed(i, j=5):
  return tf.constant([i, j], tf.int64)


def _map_over_seeds(fn, n, j=5):
  """fn(seed) for seeds [i, j], i < n, inside Dataset.map, batched."""
  ds = tf.data.Dataset.range(n).map(lambda i: fn(tf.stack([i, j])))
  return tf.nest.map_structure(lambda t: t.numpy(),
                               ds.batch(n).get_single_element())


def _binomial_bounds(n, p):
  """Counts outside these are a > 5-sigma event."""
  sd = np.sqrt(n * p * (1 - p))
  return n * p - 5 * sd, n * p + 5 * sd


# Every seeded per-image op, as fn(image, seed) on a float [24, 20, 3] image,
# with the expected output shape.
_OPS = {
    "random_crop_resize": (lambda x, s: augment.random_crop_resize(x, s, 8),
                           (8, 8, 3)),
    "random_crop_resize_rect": (
        lambda x, s: augment.random_crop_resize(x, s, (6, 9)), (6, 9, 3)),
    "random_flip": (augment.random_flip, (24, 20, 3)),
    "color_jitter": (lambda x, s: augment.color_jitter(x, s, 1.0), (24, 20, 3)),
    "color_jitter_fixed_order": (
        lambda x, s: augment.color_jitter(x, s, 0.5, random_order=False),
        (24, 20, 3)),
    "random_color_distortion": (
        lambda x, s: augment.random_color_distortion(x, s, 1.0), (24, 20, 3)),
    "pretrain_view": (
        lambda x, s: augment.preprocess_for_pretrain_view(x, s, 8, 1.0),
        (8, 8, 3)),
    "finetune": (lambda x, s: augment.preprocess_for_finetune(x, s, 8),
                 (8, 8, 3)),
    "blur_batch": (
        lambda x, s: augment.random_gaussian_blur_batch(
            tf.stack([x, x[::-1]]), s, 64, prob=0.5), (2, 24, 20, 3)),
}
# Ops with a continuous random parameter always differ between seeds; the
# others must take at least two distinct outcomes over 8 seeds.
_DISCRETE_OPS = {"random_flip", "random_color_distortion", "blur_batch"}


@pytest.mark.parametrize("name", sorted(_OPS))
def test_op_eager_equals_dataset_map_and_is_seeded(name):
  fn, shape = _OPS[name]
  image = tf.constant(_image(24, 20))
  eager = fn(image, _seed(3))
  assert eager.dtype == tf.float32 and tuple(eager.shape) == shape
  # Seeds [i, 5], i < 8, inside Dataset.map; [3, 5] is the eager seed.
  ds = tf.data.Dataset.range(8).map(lambda i: fn(image, tf.stack([i, 5])))
  assert ds.element_spec.dtype == tf.float32
  assert tuple(ds.element_spec.shape) == shape
  outputs = ds.batch(8).get_single_element().numpy()
  np.testing.assert_array_equal(outputs[3], eager.numpy())
  # An int32 seed is the same seed as its int64 value.
  np.testing.assert_array_equal(
      fn(image, tf.constant([3, 5], tf.int32)).numpy(), eager.numpy())

  distinct = {o.tobytes() for o in outputs}
  assert len(distinct) >= (2 if name in _DISCRETE_OPS else 8)
  assert outputs.min() >= 0.0 and outputs.max() <= 1.0


def test_uniform_is_identical_eagerly_and_under_xla():
  fn = lambda s: augment.uniform([1000], s, 0.1, 2.0)
  eager = fn(_seed(1)).numpy()
  xla = tf.function(fn, jit_compile=True)(_seed(1)).numpy()
  np.testing.assert_allclose(xla, eager, rtol=2e-7)
  unit = augment.uniform([1000], _seed(1)).numpy()
  np.testing.assert_array_equal(
      tf.function(lambda s: augment.uniform([1000], s),
                  jit_compile=True)(_seed(1)).numpy(), unit)
  assert eager.min() >= 0.1 and eager.max() < 2.0
  assert eager.min() < 0.15 and eager.max() > 1.95
  assert 0.45 < unit.mean() < 0.55


def test_split_seed_gives_distinct_deterministic_seeds():
  seeds = augment.split_seed(_seed(1), 4).numpy()
  assert seeds.shape == (4, 2) and seeds.dtype == np.int64
  assert len({tuple(s) for s in seeds}) == 4
  np.testing.assert_array_equal(augment.split_seed(_seed(1), 4).numpy(), seeds)
  assert not np.array_equal(augment.split_seed(_seed(2), 4).numpy(), seeds)


def test_to_float_matches_reference_conversion():
  x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
  out = augment.to_float(x).numpy()
  assert out.dtype == np.float32
  # tf.image.convert_image_dtype semantics: x * float32(1/255).
  np.testing.assert_array_equal(
      out, x.astype(np.float32) * np.float32(1.0 / 255.0))
  np.testing.assert_allclose(out, x / 255.0, rtol=1.2e-7, atol=0)
  assert out[0, 0, 0] == 0.0 and out[-1, -1, 0] == 1.0


# ---------------------------------------------------------------------------
# Flip.


def test_flip_mirrors_left_right_with_probability_half():
  image = _image(5, 7)
  outs = _map_over_seeds(lambda s: augment.random_flip(image, s), 400)
  flipped = 0
  for out in outs:
    if np.array_equal(out, image[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image)
  lo, hi = _binomial_bounds(400, 0.5)
  assert lo < flipped < hi
  assert tf.reduce_all(augment.random_flip(image, SEED, prob=1.0)
                       == image[:, ::-1])
  assert tf.reduce_all(augment.random_flip(image, SEED, prob=0.0) == image)


# ---------------------------------------------------------------------------
# Random crop (quirk Q11).


def test_crop_window_area_at_least_ten_percent_and_aspect_in_range():
  h, w = 48, 64
  windows = _map_over_seeds(
      lambda s: augment.sample_crop_window(tf.constant([h, w, 3]), s), 500)
  y, x, ch, cw = windows.T
  assert np.all(y >= 0) and np.all(x >= 0)
  assert np.all(y + ch <= h) and np.all(x + cw <= w)
  area = ch * cw / (h * w)
  # area_range starts at 0.08 but min_object_covered=0.1 rejects smaller crops.
  assert area.min() >= 0.1
  assert area.min() < 0.2 and area.max() > 0.8
  # width = round(height * ratio), ratio in [3/4, 4/3].
  ratio = cw / ch
  assert np.all(ratio >= 0.75 - 0.5 / ch) and np.all(ratio <= 4 / 3 + 0.5 / ch)
  assert ratio.min() < 0.8 and ratio.max() > 1.25
  assert len({tuple(wi) for wi in windows}) > 400


def test_crop_height_is_uniform_over_integers():
  # Ratio fixed to 1 and area in [0.25, 1] on 40x40: heights 20..40, each with
  # probability 1/21 (torchvision-style area-uniform sampling would favour
  # large heights).
  windows = _map_over_seeds(
      lambda s: augment.sample_crop_window(
          tf.constant([40, 40, 3]), s, aspect_ratio_range=(1.0, 1.0),
          area_range=(0.25, 1.0)), 2100)
  np.testing.assert_array_equal(windows[:, 2], windows[:, 3])
  counts = np.bincount(windows[:, 2], minlength=41)
  assert counts[:20].sum() == 0
  assert np.all(counts[20:] > 50) and np.all(counts[20:] < 150)


def test_crop_window_falls_back_to_whole_image():
  window = augment.sample_crop_window(
      tf.constant([20, 20, 3]), SEED, aspect_ratio_range=(3.9, 4.0),
      area_range=(0.9, 1.0))
  np.testing.assert_array_equal(window.numpy(), [0, 0, 20, 20])


@pytest.mark.parametrize("size,ratio_range", [(8, (0.75, 4 / 3)),
                                              ((6, 12), (1.5, 8 / 3))])
def test_random_crop_resize_is_bicubic_resize_of_sampled_window(
    size, ratio_range):
  image = _image(30, 24)
  out_hw = (size, size) if isinstance(size, int) else size
  for i in range(5):
    out = augment.random_crop_resize(image, _seed(i), size).numpy()
    y, x, h, w = augment.sample_crop_window(
        tf.constant(image.shape), _seed(i), aspect_ratio_range=ratio_range
    ).numpy()
    expected = tf.image.resize(image[y:y + h, x:x + w], out_hw,
                               method="bicubic").numpy()
    np.testing.assert_array_equal(out, np.clip(expected, 0.0, 1.0))


# ---------------------------------------------------------------------------
# Colour.


def test_jitter_params_ranges_and_uniform_permutations():
  for strength in (0.5, 1.25):
    params = _map_over_seeds(
        lambda s, st=strength: augment.sample_color_jitter_params(s, st), 600)
    ranges = {
        "brightness": (max(1 - 0.8 * strength, 0.0), 1 + 0.8 * strength),
        "contrast": (1 - 0.8 * strength, 1 + 0.8 * strength),
        "saturation": (1 - 0.8 * strength, 1 + 0.8 * strength),
        "hue": (-0.2 * strength, 0.2 * strength),
    }
    for name, bounds in augment.color_jitter_ranges(strength).items():
      assert bounds == pytest.approx(ranges[name]), name
    for name, (lo, hi) in ranges.items():
      values = params[name]
      width = hi - lo
      assert values.min() >= lo - 1e-6 and values.max() <= hi + 1e-6, name
      assert values.min() < lo + 0.05 * width, name
      assert values.max() > hi - 0.05 * width, name
    orders = params["order"]
    np.testing.assert_array_equal(np.sort(orders, axis=1),
                                  np.tile(np.arange(4), (600, 1)))
    assert len({tuple(o) for o in orders}) == 24
  fixed = augment.sample_color_jitter_params(SEED, 1.0, random_order=False)
  np.testing.assert_array_equal(fixed["order"].numpy(), [0, 1, 2, 3])


def _hsv(rgb):
  return np.array(colorsys.rgb_to_hsv(*[float(c) for c in rgb]))


def test_jitter_factors_observed_on_constant_colour_images():
  """Brightness, saturation and hue read back from a flat colour; contrast
  from a flat-coloured two-level grey image."""
  strength = 1.0
  colour = np.array([0.5, 0.45, 0.4], np.float32)  # h=1/12, s=0.2, v=0.5
  flat = np.broadcast_to(colour, (4, 4, 3)).copy()
  grey = np.full((4, 4, 3), 0.25, np.float32)
  grey[:, 2:] = 0.35  # channel mean 0.3, deviations +-0.05

  def run(s):
    return (augment.color_jitter(flat, s, strength),
            augment.color_jitter(grey, s, strength),
            augment.sample_color_jitter_params(s, strength))

  flat_out, grey_out, params = _map_over_seeds(run, 200)
  h0, s0, v0 = _hsv(colour)
  ranges = augment.color_jitter_ranges(strength)
  for i in range(200):
    np.testing.assert_allclose(
        flat_out[i], np.broadcast_to(flat_out[i, 0, 0], flat.shape), atol=1e-6)
    h, s, v = _hsv(flat_out[i, 0, 0])
    brightness, saturation = v / v0, s / s0
    hue = (h - h0 + 0.5) % 1.0 - 0.5
    grey_lo, grey_hi = grey_out[i, 0, 0, 0], grey_out[i, 0, 3, 0]
    brightness_grey = (grey_lo + grey_hi) / 2 / 0.3
    contrast = (grey_hi - grey_lo) / 0.1 / brightness_grey
    observed = {"brightness": brightness, "saturation": saturation,
                "hue": hue, "contrast": contrast}
    for name, value in observed.items():
      lo, hi = ranges[name]
      assert lo - 1e-4 <= value <= hi + 1e-4, (name, value)
      np.testing.assert_allclose(value, params[name][i], atol=2e-4,
                                 err_msg=name)
    np.testing.assert_allclose(brightness_grey, brightness, atol=2e-4)


def _np_brightness(x, f):
  return x * f


def _np_contrast(x, f):
  mean = x.mean(axis=(0, 1), keepdims=True, dtype=np.float64)
  return (x - mean) * f + mean


def _np_hsv_map(x, fn):
  out = np.empty_like(x, dtype=np.float64)
  for idx in np.ndindex(x.shape[:2]):
    h, s, v = colorsys.rgb_to_hsv(*x[idx].astype(np.float64))
    out[idx] = colorsys.hsv_to_rgb(*fn(h, s, v))
  return out


def _np_saturation(x, f):
  return _np_hsv_map(x, lambda h, s, v: (h, min(max(s * f, 0.0), 1.0), v))


def _np_hue(x, d):
  return _np_hsv_map(x, lambda h, s, v: ((h + d) % 1.0, s, v))


def test_color_jitter_matches_numpy_composition_in_sampled_order():
  image = _image(4, 4, seed=3)
  np_ops = [_np_brightness, _np_contrast, _np_saturation, _np_hue]
  orders = set()
  for i in range(12):
    out = augment.color_jitter(image, _seed(i), 1.0).numpy()
    params = {k: v.numpy() for k, v in
              augment.sample_color_jitter_params(_seed(i), 1.0).items()}
    orders.add(tuple(params["order"]))
    expected = image.astype(np.float64)
    for op in params["order"]:
      factor = params[augment.COLOR_OP_NAMES[op]]
      expected = np.clip(np_ops[op](expected, float(factor)), 0.0, 1.0)
    np.testing.assert_allclose(out, expected, atol=2e-5)
  assert len(orders) > 3


def test_to_grayscale_uses_itu_weights():
  image = _image(5, 6)
  out = augment.to_grayscale(image).numpy()
  expected = image @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  for c in range(3):
    np.testing.assert_allclose(out[..., c], expected, rtol=1e-6)
  assert augment.GRAYSCALE_WEIGHTS == (0.2989, 0.5870, 0.1140)


def test_color_distortion_applies_jitter_and_grayscale_with_probabilities():
  image = _image(6, 6)
  n = 400
  outs = _map_over_seeds(
      lambda s: augment.random_color_distortion(image, s, 1.0), n)
  gray_input = augment.to_grayscale(image).numpy()
  gray = jittered = 0
  for out in outs:
    is_gray = np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(
        out[..., 1], out[..., 2])
    gray += is_gray
    reference = gray_input if is_gray else image
    jittered += not np.allclose(out, reference, atol=1e-6)
  lo, hi = _binomial_bounds(n, 0.2)
  assert lo < gray < hi
  lo, hi = _binomial_bounds(n, 0.8)
  assert lo < jittered < hi
  never = augment.random_color_distortion(image, SEED, 1.0, jitter_prob=0.0,
                                          grayscale_prob=0.0)
  np.testing.assert_array_equal(never.numpy(), image)
  always_gray = augment.random_color_distortion(
      image, SEED, 1.0, jitter_prob=0.0, grayscale_prob=1.0)
  np.testing.assert_array_equal(always_gray.numpy(), gray_input)


def test_zero_strength_disables_the_whole_colour_distortion():
  image = _uint8(20, 20)

  def count_gray(strength):
    views = _map_over_seeds(
        lambda s: augment.preprocess_for_pretrain_view(image, s, 16, strength),
        100)
    return sum(np.array_equal(v[..., 0], v[..., 1]) for v in views)

  assert count_gray(0.0) == 0
  lo, hi = _binomial_bounds(100, 0.2)
  assert lo < count_gray(1.0) < hi


# ---------------------------------------------------------------------------
# Batched Gaussian blur (quirk Q12).


def _np_kernel(sigma, radius):
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-x ** 2 / (2 * sigma ** 2))
  return k / k.sum()


def _np_blur(image, sigma, radius):
  """Separable blur of [H, W, C], zero padding, horizontal then vertical."""
  k = _np_kernel(sigma, radius)
  h, w, _ = image.shape
  padded = np.pad(image.astype(np.float64), ((0, 0), (radius, radius), (0, 0)))
  horiz = sum(k[i] * padded[:, i:i + w] for i in range(2 * radius + 1))
  padded = np.pad(horiz, ((radius, radius), (0, 0), (0, 0)))
  return sum(k[i] * padded[i:i + h] for i in range(2 * radius + 1))


@pytest.mark.parametrize("image_size,taps", [(32, 3), (224, 23), (64, 7),
                                             (19, 1), (20, 3)])
def test_blur_kernel_taps(image_size, taps):
  radius = augment.blur_radius(image_size)
  assert 2 * radius + 1 == taps
  kernel = augment.gaussian_kernel(0.7, radius).numpy()
  assert kernel.shape == (taps,)
  np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(kernel, _np_kernel(0.7, radius), rtol=1e-5,
                             atol=1e-30)  # far taps underflow float32
  np.testing.assert_allclose(kernel, kernel[::-1], rtol=1e-6)


def test_gaussian_blur_impulse_matches_numpy_with_zero_padding():
  image = np.zeros((9, 11, 3), np.float32)
  image[0, 1] = 1.0  # border impulse: part of the kernel falls off the image
  image[5, 6] = [0.2, 0.5, 1.0]
  out = augment.gaussian_blur(image[None], 1.3, 3).numpy()[0]
  expected = _np_blur(image, 1.3, 3)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  k = _np_kernel(1.3, 3)
  # Zero padding darkens the border: mass lost = weights off the image.
  assert out[..., 0].sum() == pytest.approx(
      k[2:].sum() * k[3:].sum() + 0.2, rel=1e-5)
  np.testing.assert_array_equal(
      augment.gaussian_blur(image[None], 1.3, 0).numpy()[0], image)


def _recover_sigma(blurred, row, col):
  ratio = blurred[row, col + 1, 0] / blurred[row, col, 0]
  return np.sqrt(-1.0 / (2.0 * np.log(ratio)))


def test_random_blur_shares_sigma_across_batch_and_matches_numpy():
  image_size = 64  # radius 3
  images = np.zeros((3, 16, 16, 3), np.float32)
  centres = [(5, 5), (8, 10), (10, 4)]
  for n, (r, c) in enumerate(centres):
    images[n, r, c] = 1.0
  sigmas = []
  for i in range(6):
    out = augment.random_gaussian_blur_batch(
        images, _seed(i), image_size, prob=1.0).numpy()
    per_image = [_recover_sigma(out[n], r, c) for n, (r, c) in
                 enumerate(centres)]
    np.testing.assert_allclose(per_image, per_image[0], rtol=1e-4)
    sigma = per_image[0]
    assert 0.1 <= sigma < 2.0
    for n in range(3):
      np.testing.assert_allclose(out[n], _np_blur(images[n], sigma, 3),
                                 atol=1e-5)
    sigmas.append(sigma)
  assert np.ptp(sigmas) > 0.1


def test_random_blur_keeps_blurred_images_with_probability():
  images = np.random.default_rng(1).uniform(
      0.0, 1.0, (64, 8, 8, 3)).astype(np.float32)
  out = augment.random_gaussian_blur_batch(images, SEED, 32).numpy()
  changed = np.array([not np.array_equal(o, i) for o, i in zip(out, images)])
  lo, hi = _binomial_bounds(64, 0.5)
  assert lo < changed.sum() < hi
  np.testing.assert_array_equal(
      augment.random_gaussian_blur_batch(images, SEED, 32, prob=0.0).numpy(),
      images)
  # image_size < 20: radius 0, identity.
  np.testing.assert_array_equal(
      augment.random_gaussian_blur_batch(images, SEED, 19, prob=1.0).numpy(),
      images)


def test_random_blur_under_xla_equals_eager():
  images = np.random.default_rng(2).uniform(
      0.0, 1.0, (6, 12, 12, 3)).astype(np.float32)
  fn = lambda x, s: augment.random_gaussian_blur_batch(x, s, 64)
  eager = fn(images, _seed(4)).numpy()
  graph = tf.function(fn)(images, _seed(4)).numpy()
  xla = tf.function(fn, jit_compile=True)(images, _seed(4)).numpy()
  np.testing.assert_array_equal(graph, eager)
  np.testing.assert_allclose(xla, eager, atol=1e-6)
  # Same images blurred/kept, i.e. the same random decisions.
  np.testing.assert_array_equal(
      [np.array_equal(a, b) for a, b in zip(xla, images)],
      [np.array_equal(a, b) for a, b in zip(eager, images)])
  assert xla.min() >= 0.0 and xla.max() <= 1.0


# ---------------------------------------------------------------------------
# Central crop and evaluation.


def _np_center_window(h, w, out_h, out_w, proportion=0.875):
  aspect = out_w / out_h
  p = np.float32(proportion)
  if aspect > w / h:
    ch = np.rint(np.float32(p / aspect) * np.float32(w))
    cw = np.rint(p * np.float32(w))
  else:
    ch = np.rint(p * np.float32(h))
    cw = np.rint(np.float32(p * aspect) * np.float32(h))
  ch, cw = int(ch), int(cw)
  return [(h - ch + 1) // 2, (w - cw + 1) // 2, ch, cw]


@pytest.mark.parametrize("h,w", [(10, 15), (15, 10), (12, 20), (224, 224),
                                 (256, 341), (375, 500), (33, 40), (7, 7)])
@pytest.mark.parametrize("out_hw", [(1, 1), (8, 16), (16, 8)])
def test_center_crop_window_matches_numpy(h, w, out_hw):
  window = augment.center_crop_window(h, w, out_hw).numpy()
  np.testing.assert_array_equal(window, _np_center_window(h, w, *out_hw))


def test_center_crop_window_pinned_values():
  win = lambda h, w, size=1: augment.center_crop_window(h, w, size).numpy()
  np.testing.assert_array_equal(win(10, 15), [1, 3, 9, 9])
  np.testing.assert_array_equal(win(12, 20), [1, 5, 10, 10])  # rint(10.5)=10
  np.testing.assert_array_equal(win(256, 341), [16, 59, 224, 224])
  np.testing.assert_array_equal(win(375, 500), [24, 86, 328, 328])
  np.testing.assert_array_equal(win(40, 40, (10, 20)), [11, 3, 18, 35])


def test_center_crop_resize_crops_the_window():
  image = _image(10, 15)
  # Output size equal to the crop size: bicubic resize is the identity.
  out = augment.center_crop_resize(image, 9).numpy()
  np.testing.assert_array_equal(out, image[1:10, 3:12])
  out = augment.center_crop_resize(image, 5).numpy()
  expected = tf.image.resize(image[1:10, 3:12], (5, 5), "bicubic").numpy()
  np.testing.assert_array_equal(out, np.clip(expected, 0, 1))


def test_eval_small_images_are_left_untouched():
  image = _uint8(32, 32)
  out = augment.preprocess_for_eval(image, 32).numpy()
  np.testing.assert_array_equal(out, augment.to_float(image).numpy())
  dynamic = tf.data.Dataset.from_generator(
      lambda: [image], output_signature=tf.TensorSpec([None, None, None],
                                                      tf.uint8))
  dynamic = dynamic.map(lambda x: augment.preprocess_for_eval(x, 32))
  assert dynamic.element_spec.shape == (32, 32, 3)
  np.testing.assert_array_equal(dynamic.get_single_element().numpy(), out)


def test_eval_resizes_small_images_of_another_size():
  image = _uint8(28, 28, channels=1)
  out = augment.preprocess_for_eval(image, 32).numpy()
  assert out.shape == (32, 32, 3)
  expected = tf.image.resize(image.astype(np.float32) / 255.0, (32, 32),
                             "bicubic").numpy()
  np.testing.assert_allclose(out[..., 0], np.clip(expected[..., 0], 0, 1),
                             atol=1e-6)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_eval_large_images_are_center_cropped():
  image = _uint8(48, 40)
  out = augment.preprocess_for_eval(image, 35).numpy()
  expected = augment.center_crop_resize(augment.to_float(image), 35).numpy()
  np.testing.assert_array_equal(out, expected)
  # 0.875 * 40 = 35: crop 35x35 at (7, 3), resize to the same size.
  np.testing.assert_array_equal(out, augment.to_float(image).numpy()[7:42, 3:38])


# ---------------------------------------------------------------------------
# Builders.


def _dynamic_examples(images, label=4):
  spec = {"image": tf.TensorSpec([None, None, None], tf.uint8),
          "label": tf.TensorSpec([], tf.int32)}
  return tf.data.Dataset.from_generator(
      lambda: [{"image": im, "label": np.int32(label)} for im in images],
      output_signature=spec)


def test_pretrain_builder_produces_two_static_views():
  fn = augment.build_pretrain_augment(16, 0.5)
  images = [_uint8(30, 20), _uint8(25, 25, channels=1, seed=1)]
  seeds = tf.data.Dataset.range(2).map(lambda i: tf.stack([i, 9]))
  ds = tf.data.Dataset.zip(_dynamic_examples(images), seeds).map(fn)
  spec = ds.element_spec
  assert set(spec) == {"view1", "view2", "label"}
  assert spec["view1"].shape == (16, 16, 3) and spec["view2"].shape == (16, 16, 3)
  assert spec["view1"].dtype == tf.float32
  results = list(ds)
  for i, result in enumerate(results):
    assert int(result["label"]) == 4
    assert not np.array_equal(result["view1"], result["view2"])
    for key in ("view1", "view2"):
      assert 0.0 <= result[key].numpy().min() <= result[key].numpy().max() <= 1.0
    eager = fn({"image": images[i], "label": tf.constant(4)}, _seed(i, 9))
    np.testing.assert_array_equal(eager["view1"], result["view1"])
    np.testing.assert_array_equal(eager["view2"], result["view2"])


def test_finetune_and_eval_builders():
  images = [_uint8(30, 20), _uint8(40, 40, channels=1, seed=1)]
  seeds = tf.data.Dataset.range(2).map(lambda i: tf.stack([i, 9]))
  fine = tf.data.Dataset.zip(_dynamic_examples(images), seeds).map(
      augment.build_finetune_augment(12))
  assert set(fine.element_spec) == {"image", "label"}
  assert fine.element_spec["image"].shape == (12, 12, 3)
  for i, result in enumerate(fine):
    expected = augment.preprocess_for_finetune(images[i], _seed(i, 9), 12)
    np.testing.assert_array_equal(result["image"], expected)

  evaluation = _dynamic_examples(images).map(augment.build_eval_preprocess(36))
  assert set(evaluation.element_spec) == {"image", "label"}
  assert evaluation.element_spec["image"].shape == (36, 36, 3)
  for i, result in enumerate(evaluation):
    np.testing.assert_array_equal(
        result["image"], augment.preprocess_for_eval(images[i], 36))
    assert int(result["label"]) == 4


def test_invalid_arguments_raise_value_error():
  image = _image()
  with pytest.raises(ValueError, match="color_jitter_strength"):
    augment.color_jitter(image, SEED, 1.3)
  with pytest.raises(ValueError, match="color_jitter_strength"):
    augment.build_pretrain_augment(32, -0.1)
  with pytest.raises(ValueError, match="image_size"):
    augment.build_eval_preprocess(0)
  with pytest.raises(ValueError, match="image_size"):
    augment.random_gaussian_blur_batch(image[None], SEED, 32.0)
  with pytest.raises(ValueError, match="prob"):
    augment.random_flip(image, SEED, prob=1.5)
  with pytest.raises(ValueError, match="seed"):
    augment.random_flip(image, [1, 2, 3])
  with pytest.raises(ValueError, match="size"):
    augment.random_crop_resize(image, SEED, (4, 4, 4))
  with pytest.raises(ValueError, match="area_range"):
    augment.random_crop_resize(image, SEED, 4, area_range=(0.5, 0.2))
  with pytest.raises(ValueError, match="crop_proportion"):
    augment.center_crop_resize(image, 4, crop_proportion=0.0)
  with pytest.raises(ValueError, match="channels"):
    augment.ensure_rgb(tf.zeros([4, 4, 2]))


def test_min_crop_area_bounds_the_pretrain_crop():
  areas = []
  for i in range(200):
    y, x, h, w = augment.sample_crop_window(
        tf.constant([40, 40, 3]), tf.constant([3, i], tf.int64),
        area_range=(0.4, 1.0)).numpy()
    areas.append(h * w / 1600)
  # Integer rounding of height and width may shave a little off the bound.
  assert min(areas) >= 0.37 and np.mean(areas) > 0.6
  with pytest.raises(ValueError, match="min_crop_area"):
    augment.build_pretrain_augment(16, 0.5, min_crop_area=0.0)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_flip_probability_of_pretrain_and_finetune_views(flip_prob):
  image = np.zeros([8, 8, 3], np.uint8)
  image[:, :2] = 255  # a left edge: its mirror is a right edge
  for seed in range(4):
    views = [
        augment.preprocess_for_pretrain_view(
            image, [seed, 1], 8, color_jitter_strength=0.0,
            min_crop_area=1.0, flip_prob=flip_prob),
        augment.preprocess_for_finetune(image, [seed, 2], 8,
                                        min_crop_area=1.0,
                                        flip_prob=flip_prob)]
    for view in views:
      left_edge = float(tf.reduce_mean(view[:, 0]))
      assert left_edge == (0.0 if flip_prob else 1.0)
  with pytest.raises(ValueError, match="min_crop_area"):
    augment.build_finetune_augment(8, min_crop_area=0.0)
