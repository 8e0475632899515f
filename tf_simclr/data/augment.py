"""Seeded, stateless image augmentations and the builders that compose them.

Every random op takes a `seed`: an int32/int64 tensor of shape [2]. The same
seed gives the same output eagerly, inside `tf.data.Dataset.map` and inside a
`tf.function` (also with `jit_compile=True` for the batched blur). Sub-seeds are
derived from it, so independent draws inside one op never share randomness.

Images are float32 in [0, 1], layout [H, W, 3] (the blur takes [N, H, W, 3]).
The semantics follow SPEC §5 (SimCLR's TF2 reference), including quirks Q11
(crop sampled by `sample_distorted_bounding_box`, effective minimum area 10 %)
and Q12 (one blur sigma per batch, kernel size from the configured image size).

Known deliberate differences from the reference:
  * `random_crop_resize` clips to [0, 1] right after the bicubic resize, so every
    op maps [0, 1] images to [0, 1]; the reference clips only after each colour
    op and at the end of the view.
  * `preprocess_for_eval` with image_size <= 32 resizes images of another size
    instead of failing.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import tensorflow as tf

Size = Union[int, Sequence[int]]

# Above this, the TF colour ops the reference uses reject their arguments
# (contrast/saturation lower bound 1 - 0.8 s must stay >= 0).
MAX_COLOR_JITTER_STRENGTH = 1.25

# ITU-R 601 luma weights, as used by tf.image.rgb_to_grayscale.
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)

# Indices of the colour-jitter ops (the order used when random_order=False).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
COLOR_OP_NAMES = ("brightness", "contrast", "saturation", "hue")

# Image sizes up to this use CIFAR-style evaluation (no central crop).
CIFAR_MAX_IMAGE_SIZE = 32

BLUR_SIGMA_RANGE = (0.1, 2.0)

# Philox is pinned explicitly: with the default "auto_select" the XLA-compiled
# blur would draw different numbers than the eager one.
_RNG_ALG = "philox"


# ----------------------------------------------------------------------------
# Argument checks and seeds.


def _check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(
      value, numbers.Integral) or value <= 0:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)


def _check_size(name: str, size: Size) -> Tuple[int, int]:
  """Normalises an int or (height, width) pair."""
  if isinstance(size, (list, tuple)):
    if len(size) != 2:
      raise ValueError(f"{name} must be an int or (height, width), got {size!r}")
    return (_check_positive_int(name, size[0]),
            _check_positive_int(name, size[1]))
  side = _check_positive_int(name, size)
  return side, side


def _check_range(name: str, value: Any, low: float, high: float) -> Tuple[float, float]:
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a (min, max) pair, got {value!r}") from None
  if not low <= lo <= hi <= high:
    raise ValueError(
        f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
  return lo, hi


def _check_probability(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
      0.0 <= value <= 1.0):
    raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
  return float(value)


def _check_crop_area(min_crop_area: Any) -> float:
  if not isinstance(min_crop_area, numbers.Real) or not (
      0.0 < min_crop_area <= 1.0):
    raise ValueError(f"min_crop_area must be in (0, 1], got {min_crop_area!r}")
  return float(min_crop_area)


def _check_strength(strength: Any) -> float:
  if isinstance(strength, bool) or not isinstance(
      strength, numbers.Real) or not 0.0 <= strength <= MAX_COLOR_JITTER_STRENGTH:
    raise ValueError(
        f"color_jitter_strength must be a number in [0, "
        f"{MAX_COLOR_JITTER_STRENGTH}], got {strength!r}")
  return float(strength)


def _as_seed(seed: Any) -> tf.Tensor:
  """Converts to a [2] int32/int64 tensor, rejecting a wrong static shape."""
  seed = tf.convert_to_tensor(seed)
  if seed.dtype not in (tf.int32, tf.int64):
    raise ValueError(f"seed must be an int32 or int64 tensor, got {seed.dtype}")
  if seed.shape.rank is not None and seed.shape.as_list() not in ([2], [None]):
    raise ValueError(f"seed must have shape [2], got {seed.shape}")
  return seed


def split_seed(seed: Any, num: int) -> tf.Tensor:
  """Derives `num` independent seeds, returned as an int64 tensor [num, 2]."""
  return tf.random.stateless_uniform(
      [num, 2], _as_seed(seed), minval=None, maxval=None, dtype=tf.int64,
      alg=_RNG_ALG)


def uniform(shape: Sequence[int], seed: Any, minval: float = 0.0,
            maxval: float = 1.0) -> tf.Tensor:
  """Float32 uniform in [minval, maxval), identical eagerly and under XLA.

  The float is built from 24 random bits by hand because the TF CPU kernel and
  its XLA lowering turn the same bits into different floats.

  Args:
    shape: output shape.
    seed: stateless seed [2].
    minval: inclusive lower bound.
    maxval: exclusive upper bound (equal to minval gives a constant).
  """
  bits = tf.random.stateless_uniform(
      shape, _as_seed(seed), minval=None, maxval=None, dtype=tf.uint32,
      alg=_RNG_ALG)
  unit = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)),
                 tf.float32) * (2.0 ** -24)
  return minval + (maxval - minval) * unit


def _coin(seed: tf.Tensor, prob: float) -> tf.Tensor:
  return uniform([], seed) < prob


# ----------------------------------------------------------------------------
# Conversions.


def to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1]; float input is only cast to float32.

  Uses `tf.image.convert_image_dtype` (x * (1/255)), bit-identical to the
  reference's conversion.
  """
  image = tf.convert_to_tensor(image)
  return tf.image.convert_image_dtype(image, tf.float32)


def ensure_rgb(image: tf.Tensor) -> tf.Tensor:
  """Replicates a single-channel image [H, W, 1] to [H, W, 3]."""
  image = tf.convert_to_tensor(image)
  channels = image.shape[-1]
  if channels == 3:
    return image
  if channels == 1:
    return tf.image.grayscale_to_rgb(image)
  if channels is None:
    image = tf.cond(tf.equal(tf.shape(image)[-1], 1),
                    lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    return tf.ensure_shape(image, image.shape[:-1].concatenate([3]))
  raise ValueError(f"image must have 1 or 3 channels, got shape {image.shape}")


def _resize_bicubic(image: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  # Half-pixel centres, Keys cubic (a = -0.5), no antialiasing (SPEC §5.1).
  return tf.image.resize(image, size, method=tf.image.ResizeMethod.BICUBIC)


def _crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  # A plain slice: crop_to_bounding_box adds assertion ops on every call.
  crop = tf.slice(image, tf.concat([window[:2], [0]], 0),
                  tf.concat([window[2:], [-1]], 0))
  crop.set_shape([None, None, image.shape[-1]])
  return crop


def _clip(image: tf.Tensor) -> tf.Tensor:
  return tf.clip_by_value(image, 0.0, 1.0)


# ----------------------------------------------------------------------------
# Geometry.


def sample_crop_window(
    image_shape: tf.Tensor,
    seed: Any,
    aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
    area_range: Tuple[float, float] = (0.08, 1.0),
    min_object_covered: float = 0.1,
    max_attempts: int = 100) -> tf.Tensor:
  """Samples the random-crop window as int32 [offset_y, offset_x, height, width].

  `tf.image.stateless_sample_distorted_bounding_box` with the whole image as the
  only box (quirk Q11): the height is uniform among admissible integers, and
  crops covering less than `min_object_covered` of the image are rejected; if
  every attempt fails the window is the whole image.

  Args:
    image_shape: [H, W, C] int tensor.
    seed: stateless seed [2].
    aspect_ratio_range: allowed crop width/height.
    area_range: allowed crop area as a fraction of the image.
    min_object_covered: minimum fraction of the image the crop must cover.
    max_attempts: sampling attempts before falling back to the whole image.
  """
  ratio_lo, ratio_hi = _check_range(
      "aspect_ratio_range", aspect_ratio_range, 1e-6, float("inf"))
  area_lo, area_hi = _check_range("area_range", area_range, 0.0, 1.0)
  min_covered = _check_probability("min_object_covered", min_object_covered)
  max_attempts = _check_positive_int("max_attempts", max_attempts)
  whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.cast(image_shape, tf.int32),
      bounding_boxes=whole_image,
      seed=_as_seed(seed),
      min_object_covered=min_covered,
      aspect_ratio_range=(ratio_lo, ratio_hi),
      area_range=(area_lo, area_hi),
      max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  return tf.concat([begin[:2], size[:2]], axis=0)


def random_crop_resize(
    image: tf.Tensor,
    seed: Any,
    size: Size,
    area_range: Tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
    min_object_covered: float = 0.1,
    max_attempts: int = 100) -> tf.Tensor:
  """Random-area, random-aspect crop resized (bicubic) to `size`, clipped.

  Args:
    image: float [H, W, C].
    seed: stateless seed [2].
    size: output side, or (height, width).
    area_range: crop area range as a fraction of the image.
    aspect_ratio_range: crop width/height range for a square output; it is
      multiplied by out_width/out_height.
    min_object_covered: see `sample_crop_window`.
    max_attempts: see `sample_crop_window`.
  """
  out_h, out_w = _check_size("size", size)
  ratio_lo, ratio_hi = _check_range(
      "aspect_ratio_range", aspect_ratio_range, 1e-6, float("inf"))
  scale = out_w / out_h
  window = sample_crop_window(
      tf.shape(image), seed,
      aspect_ratio_range=(ratio_lo * scale, ratio_hi * scale),
      area_range=area_range, min_object_covered=min_object_covered,
      max_attempts=max_attempts)
  return _clip(_resize_bicubic(_crop(image, window), (out_h, out_w)))


def random_flip(image: tf.Tensor, seed: Any, prob: float = 0.5) -> tf.Tensor:
  """Mirrors [..., H, W, C] left-right with probability `prob`."""
  prob = _check_probability("prob", prob)
  image = tf.convert_to_tensor(image)
  return tf.cond(_coin(seed, prob),
                 lambda: tf.reverse(image, axis=[-2]), lambda: image)


def center_crop_window(height: Any, width: Any, size: Size = 1,
                       crop_proportion: float = 0.875) -> tf.Tensor:
  """Central crop window as int32 [offset_y, offset_x, crop_h, crop_w].

  Keeps `crop_proportion` of the side that is cut less; the other side follows
  the requested aspect out_width/out_height. Sizes use round-half-to-even
  (rint) in float32, offsets (side - crop + 1) // 2 (SPEC §5.4).

  Args:
    height: image height (int or scalar tensor).
    width: image width.
    size: output side or (height, width); only its aspect ratio matters.
    crop_proportion: fraction of the less-cut side that is kept.
  """
  out_h, out_w = _check_size("size", size)
  if isinstance(crop_proportion, bool) or not isinstance(
      crop_proportion, numbers.Real) or not 0.0 < crop_proportion <= 1.0:
    raise ValueError(
        f"crop_proportion must be in (0, 1], got {crop_proportion!r}")
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  aspect = out_w / out_h

  def rint(x):
    return tf.cast(tf.math.rint(x), tf.int32)

  # Requested aspect wider than the image: the width is the less-cut side.
  output_wider = aspect > w / h
  crop_h = tf.where(output_wider, rint(crop_proportion / aspect * w),
                    rint(crop_proportion * h))
  crop_w = tf.where(output_wider, rint(crop_proportion * w),
                    rint(crop_proportion * aspect * h))
  offset_y = (height - crop_h + 1) // 2
  offset_x = (width - crop_w + 1) // 2
  return tf.stack([offset_y, offset_x, crop_h, crop_w])


def center_crop_resize(image: tf.Tensor, size: Size,
                       crop_proportion: float = 0.875) -> tf.Tensor:
  """Central crop (see `center_crop_window`), bicubic resize, clip.

  Args:
    image: float [H, W, C].
    size: output side or (height, width).
    crop_proportion: fraction of the less-cut side that is kept.
  """
  out_h, out_w = _check_size("size", size)
  shape = tf.shape(image)
  window = center_crop_window(shape[0], shape[1], (out_h, out_w),
                              crop_proportion)
  return _clip(_resize_bicubic(_crop(image, window), (out_h, out_w)))


# ----------------------------------------------------------------------------
# Colour.


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """ITU-R 601 luma replicated to 3 channels (`tf.image.rgb_to_grayscale`)."""
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def adjust_brightness(image: tf.Tensor, factor: Any) -> tf.Tensor:
  """Multiplicative brightness (the reference's "simclrv2" variant)."""
  return image * factor


def adjust_contrast(image: tf.Tensor, factor: Any) -> tf.Tensor:
  """(x - mean) * factor + mean, mean per channel over H and W."""
  return tf.image.adjust_contrast(image, factor)


def adjust_saturation(image: tf.Tensor, factor: Any) -> tf.Tensor:
  """Scales HSV saturation by `factor` (clipped to [0, 1] by the op)."""
  return tf.image.adjust_saturation(image, factor)


def adjust_hue(image: tf.Tensor, delta: Any) -> tf.Tensor:
  """Rotates the hue by `delta` (fraction of the hue circle)."""
  return tf.image.adjust_hue(image, delta)


_COLOR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter_ranges(strength: float) -> Dict[str, Tuple[float, float]]:
  """The sampling range of each colour-jitter parameter for `strength`."""
  s = _check_strength(strength)
  return {
      "brightness": (max(1.0 - 0.8 * s, 0.0), 1.0 + 0.8 * s),
      "contrast": (1.0 - 0.8 * s, 1.0 + 0.8 * s),
      "saturation": (1.0 - 0.8 * s, 1.0 + 0.8 * s),
      "hue": (-0.2 * s, 0.2 * s),
  }


def sample_color_jitter_params(seed: Any, strength: float,
                               random_order: bool = True
                               ) -> Dict[str, tf.Tensor]:
  """Draws the colour-jitter factors and the order the ops run in.

  Args:
    seed: stateless seed [2].
    strength: colour jitter strength s in [0, 1.25].
    random_order: draw a uniform permutation of the four ops; otherwise
      brightness, contrast, saturation, hue.

  Returns:
    {"brightness", "contrast", "saturation", "hue"}: float32 scalars, and
    "order": int32 [4], the op indices (BRIGHTNESS...HUE) in application order.
  """
  ranges = color_jitter_ranges(strength)
  seeds = split_seed(seed, 5)
  params = {name: uniform([], seeds[i], *ranges[name])
            for i, name in enumerate(COLOR_OP_NAMES)}
  if random_order:
    # Sorting i.i.d. uniforms gives every permutation the same probability.
    params["order"] = tf.argsort(uniform([4], seeds[4]))
  else:
    params["order"] = tf.range(4, dtype=tf.int32)
  return params


def color_jitter(image: tf.Tensor, seed: Any, strength: float,
                 random_order: bool = True) -> tf.Tensor:
  """Brightness, contrast, saturation and hue jitter, clipping after each.

  Args:
    image: float [H, W, 3] in [0, 1].
    seed: stateless seed [2].
    strength: s in [0, 1.25]; factors are drawn from `color_jitter_ranges(s)`.
    random_order: apply the four ops in a uniformly random order.
  """
  params = sample_color_jitter_params(seed, strength, random_order)
  image = tf.convert_to_tensor(image)
  factors = [params[name] for name in COLOR_OP_NAMES]
  for position in range(4):
    branches = [
        (lambda op=op, factor=factor, x=image: _clip(op(x, factor)))
        for op, factor in zip(_COLOR_OPS, factors)
    ]
    image = tf.switch_case(params["order"][position], branches)
  return image


def random_color_distortion(image: tf.Tensor, seed: Any, strength: float,
                            jitter_prob: float = 0.8,
                            grayscale_prob: float = 0.2) -> tf.Tensor:
  """Colour jitter with probability 0.8, then grayscale with probability 0.2.

  Args:
    image: float [H, W, 3] in [0, 1].
    seed: stateless seed [2].
    strength: colour jitter strength in [0, 1.25].
    jitter_prob: probability of applying `color_jitter`.
    grayscale_prob: probability of converting to grayscale (independent).
  """
  _check_strength(strength)
  jitter_prob = _check_probability("jitter_prob", jitter_prob)
  grayscale_prob = _check_probability("grayscale_prob", grayscale_prob)
  image = tf.convert_to_tensor(image)
  jitter_coin_seed, jitter_seed, gray_coin_seed = tf.unstack(
      split_seed(seed, 3))
  image = tf.cond(_coin(jitter_coin_seed, jitter_prob),
                  lambda: color_jitter(image, jitter_seed, strength),
                  lambda: image)
  return tf.cond(_coin(gray_coin_seed, grayscale_prob),
                 lambda: to_grayscale(image), lambda: image)


# ----------------------------------------------------------------------------
# Batched Gaussian blur (SPEC §5.3, quirk Q12).


def blur_radius(image_size: int) -> int:
  """Kernel radius from the configured image size: (image_size // 10) // 2."""
  return _check_positive_int("image_size", image_size) // 10 // 2


def gaussian_kernel(sigma: Any, radius: int) -> tf.Tensor:
  """Normalised 1-D Gaussian weights exp(-x^2 / (2 sigma^2)), x = -r..r."""
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  sigma = tf.cast(sigma, tf.float32)
  weights = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  return weights / tf.reduce_sum(weights)


def gaussian_blur(images: tf.Tensor, sigma: Any, radius: int) -> tf.Tensor:
  """Separable Gaussian blur of [N, H, W, C], zero 'SAME' padding.

  Horizontal pass then vertical pass, as depthwise convolutions.

  Args:
    images: float [N, H, W, C] with static C.
    sigma: scalar standard deviation in pixels.
    radius: kernel radius; 2 * radius + 1 taps; 0 returns `images` unchanged.
  """
  images = tf.convert_to_tensor(images)
  if radius == 0:
    return images
  channels = images.shape[-1]
  if channels is None:
    raise ValueError("images must have a static channel dimension")
  taps = gaussian_kernel(sigma, radius)
  kernel_h = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, channels, 1])
  kernel_v = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, channels, 1])
  strides = [1, 1, 1, 1]
  blurred = tf.nn.depthwise_conv2d(images, kernel_h, strides, padding="SAME")
  return tf.nn.depthwise_conv2d(blurred, kernel_v, strides, padding="SAME")


def random_gaussian_blur_batch(images: tf.Tensor, seed: Any, image_size: int,
                               prob: float = 0.5) -> tf.Tensor:
  """Blurs each image of a per-replica view batch with probability `prob`.

  One sigma ~ U[0.1, 2.0) is shared by the whole batch and the kernel size
  comes from the configured `image_size`, not the tensor (quirk Q12). Works
  inside `tf.function`, also with `jit_compile=True`.

  Args:
    images: float [N, H, W, 3] in [0, 1].
    seed: stateless seed [2].
    image_size: configured image size (kernel size image_size // 10).
    prob: per-image probability of keeping the blurred version.
  """
  radius = blur_radius(image_size)
  prob = _check_probability("prob", prob)
  images = tf.convert_to_tensor(images)
  if radius == 0:
    return images
  sigma_seed, keep_seed = tf.unstack(split_seed(seed, 2))
  sigma = uniform([], sigma_seed, *BLUR_SIGMA_RANGE)
  blurred = gaussian_blur(images, sigma, radius)
  keep = uniform(tf.stack([tf.shape(images)[0], 1, 1, 1]), keep_seed) < prob
  return _clip(tf.where(keep, blurred, images))


def _maybe_flip(image: tf.Tensor, seed: Any, prob: float) -> tf.Tensor:
  # No conditional in the graph at all when flips are off.
  return random_flip(image, seed, prob) if _check_probability(
      "flip_prob", prob) > 0 else image


# ----------------------------------------------------------------------------
# Per-stage preprocessing.


def _prepare(image: tf.Tensor) -> tf.Tensor:
  return ensure_rgb(to_float(image))


def preprocess_for_pretrain_view(image: tf.Tensor, seed: Any, image_size: int,
                                 color_jitter_strength: float,
                                 min_crop_area: float = 0.08,
                                 flip_prob: float = 0.5) -> tf.Tensor:
  """One SimCLR view: crop+resize, flip, colour distortion, clip (no blur).

  Args:
    image: uint8 or float [H, W, 1 or 3].
    seed: stateless seed [2].
    image_size: output side S.
    color_jitter_strength: s in [0, 1.25]; 0 disables colour distortion.
    min_crop_area: lower end of the crop's area range (the reference's 0.08;
      tiny source images such as 8x8 digits keep their content with more).
    flip_prob: probability of a left-right mirror (the reference's 0.5;
      0 for images whose mirror is another class or none, such as digits).
  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  image_size = _check_positive_int("image_size", image_size)
  strength = _check_strength(color_jitter_strength)
  crop_seed, flip_seed, color_seed = tf.unstack(split_seed(seed, 3))
  image = random_crop_resize(_prepare(image), crop_seed, image_size,
                             area_range=(min_crop_area, 1.0))
  image = _maybe_flip(image, flip_seed, flip_prob)
  if strength > 0:
    image = random_color_distortion(image, color_seed, strength)
  return _clip(tf.reshape(image, [image_size, image_size, 3]))


def preprocess_for_finetune(image: tf.Tensor, seed: Any,
                            image_size: int, min_crop_area: float = 0.08,
                            flip_prob: float = 0.5) -> tf.Tensor:
  """Fine-tuning augmentation: crop+resize and flip only.

  Args:
    image: uint8 or float [H, W, 1 or 3].
    seed: stateless seed [2].
    image_size: output side S.
    min_crop_area: lower end of the crop's area range (the reference's 0.08).
    flip_prob: probability of a left-right mirror (the reference's 0.5).
  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  image_size = _check_positive_int("image_size", image_size)
  crop_seed, flip_seed = tf.unstack(split_seed(seed, 2))
  image = random_crop_resize(_prepare(image), crop_seed, image_size,
                             area_range=(min_crop_area, 1.0))
  image = _maybe_flip(image, flip_seed, flip_prob)
  return _clip(tf.reshape(image, [image_size, image_size, 3]))


def preprocess_for_eval(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Deterministic evaluation preprocessing (SPEC §5.4).

  image_size <= 32: no crop; an image that is not already S x S is resized
  (bicubic) rather than rejected. Larger: `center_crop_resize` with 0.875.

  Args:
    image: uint8 or float [H, W, 1 or 3].
    image_size: output side S.
  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  size = _check_positive_int("image_size", image_size)
  image = _prepare(image)
  if size > CIFAR_MAX_IMAGE_SIZE:
    image = center_crop_resize(image, size)
  elif image.shape[-3:-1].as_list() != [size, size]:
    if image.shape[-3:-1].is_fully_defined():
      image = _resize_bicubic(image, (size, size))
    else:
      image = tf.cond(
          tf.reduce_all(tf.equal(tf.shape(image)[:2], [size, size])),
          lambda: image, lambda: _resize_bicubic(image, (size, size)))
  return _clip(tf.reshape(image, [size, size, 3]))


# ----------------------------------------------------------------------------
# Builders for Dataset.map over named entries.


def build_pretrain_augment(
    image_size: int, color_jitter_strength: float, min_crop_area: float = 0.08,
    flip_prob: float = 0.5
) -> Callable[[Dict[str, tf.Tensor], tf.Tensor], Dict[str, tf.Tensor]]:
  """Returns fn(example, seed) -> {"view1", "view2", "label"}.

  `example` holds "image" (uint8 [H, W, 1 or 3]) and "label"; the two views
  use independent sub-seeds of `seed`.

  Args:
    image_size: output side S of each view.
    color_jitter_strength: s in [0, 1.25].
    min_crop_area: lower end of the random crop's area range, in (0, 1].
    flip_prob: probability of a left-right mirror of each view.
  """
  _check_positive_int("image_size", image_size)
  strength = _check_strength(color_jitter_strength)
  _check_crop_area(min_crop_area)
  _check_probability("flip_prob", flip_prob)

  def augment(example: Dict[str, tf.Tensor], seed: tf.Tensor
              ) -> Dict[str, tf.Tensor]:
    seed1, seed2 = tf.unstack(split_seed(seed, 2))
    image = example["image"]
    return {
        "view1": preprocess_for_pretrain_view(image, seed1, image_size,
                                              strength, min_crop_area,
                                              flip_prob),
        "view2": preprocess_for_pretrain_view(image, seed2, image_size,
                                              strength, min_crop_area,
                                              flip_prob),
        "label": example["label"],
    }

  return augment


def build_finetune_augment(
    image_size: int, min_crop_area: float = 0.08, flip_prob: float = 0.5
) -> Callable[[Dict[str, tf.Tensor], tf.Tensor], Dict[str, tf.Tensor]]:
  """Returns fn(example, seed) -> {"image", "label"} (crop + flip)."""
  image_size = _check_positive_int("image_size", image_size)
  _check_crop_area(min_crop_area)
  _check_probability("flip_prob", flip_prob)

  def augment(example: Dict[str, tf.Tensor], seed: tf.Tensor
              ) -> Dict[str, tf.Tensor]:
    return {
        "image": preprocess_for_finetune(example["image"], seed, image_size,
                                         min_crop_area, flip_prob),
        "label": example["label"],
    }

  return augment


def build_eval_preprocess(
    image_size: int
) -> Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]:
  """Returns fn(example) -> {"image", "label"} (deterministic)."""
  image_size = _check_positive_int("image_size", image_size)

  def preprocess(example: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    return {
        "image": preprocess_for_eval(example["image"], image_size),
        "label": example["label"],
    }

  return preprocess
