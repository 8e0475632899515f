"""Tests for tf_simclr.training.optimizer (SPEC §4)."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr.training import optimizer as opt_lib

IMAGENET_N = 1_281_167
CIFAR10_N = 50_000


# ---------------------------------------------------------------------------
# Step arithmetic and learning-rate schedule.
# ---------------------------------------------------------------------------


def test_step_counts_match_spec_worked_numbers():
  assert opt_lib.warmup_steps(10, IMAGENET_N, 4096) == 3127
  assert opt_lib.total_train_steps(IMAGENET_N, 4096, 100, 0) == 31279
  assert opt_lib.total_train_steps(CIFAR10_N, 512, 1000, 0) == 97657
  # Floor, not round: 10 * 50000 / 512 = 976.5625.
  assert opt_lib.warmup_steps(10, CIFAR10_N, 512) == 976
  assert opt_lib.warmup_steps(0.0, CIFAR10_N, 512) == 0
  # +1 even when the epochs divide evenly (quirk Q9).
  assert opt_lib.total_train_steps(1024, 256, 2, 0) == 9
  # An explicit step count wins over epochs.
  assert opt_lib.total_train_steps(CIFAR10_N, 512, 1000, 500) == 500


def test_epoch_steps_rounds_and_is_at_least_one():
  assert opt_lib.epoch_steps(IMAGENET_N, 4096) == 313  # 312.78
  assert opt_lib.epoch_steps(CIFAR10_N, 512) == 98  # 97.66
  assert opt_lib.epoch_steps(1000, 300) == 3  # 3.33
  assert opt_lib.epoch_steps(10, 512) == 1


def test_scaled_learning_rate():
  assert opt_lib.scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
  assert opt_lib.scaled_learning_rate(0.3, 512, "linear") == pytest.approx(0.6)
  assert opt_lib.scaled_learning_rate(1.0, 512, "linear") == pytest.approx(2.0)
  with pytest.raises(ValueError, match="scaling"):
    opt_lib.scaled_learning_rate(0.3, 512, "log")
  with pytest.raises(ValueError, match="global_batch_size"):
    opt_lib.scaled_learning_rate(0.3, 0, "linear")


def test_step_arithmetic_validation():
  with pytest.raises(ValueError, match="warmup_epochs"):
    opt_lib.warmup_steps(-1, 100, 10)
  with pytest.raises(ValueError, match="num_examples"):
    opt_lib.total_train_steps(0, 10, 1, 0)
  with pytest.raises(ValueError, match="train_steps"):
    opt_lib.total_train_steps(100, 10, 1, -5)
  with pytest.raises(ValueError, match="global_batch_size"):
    opt_lib.epoch_steps(100, -1)


def _numpy_lr(t, peak, warmup, total):
  if t < warmup:
    return t / warmup * peak
  decay = total - warmup
  return peak * 0.5 * (1.0 + math.cos(math.pi * min(t - warmup, decay) / decay))


def test_imagenet_schedule_values():
  warmup = opt_lib.warmup_steps(10, IMAGENET_N, 4096)
  total = opt_lib.total_train_steps(IMAGENET_N, 4096, 100, 0)
  schedule = opt_lib.build_learning_rate_schedule(0.075, "sqrt", 4096, warmup,
                                                  total)
  assert isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)

  def lr(t):
    return float(schedule(tf.constant(t, tf.int64)))

  assert lr(0) == 0.0
  assert lr(1) == pytest.approx(4.8 / 3127, rel=1e-6)
  assert lr(1000) == pytest.approx(4.8 * 1000 / 3127, rel=1e-6)
  assert lr(3126) == pytest.approx(4.8 * 3126 / 3127, rel=1e-6)
  assert lr(3127) == pytest.approx(4.8, rel=1e-6)
  assert lr(31279) == pytest.approx(0.0, abs=1e-6)
  assert lr(40000) == pytest.approx(0.0, abs=1e-6)  # clamped, not rising again
  for t in (3128, 10000, 17203, 25000, 31000):
    expected = _numpy_lr(t, 4.8, 3127, 31279)
    assert lr(t) == pytest.approx(expected, rel=1e-5, abs=1e-6), t
  # Mid-cosine anchor: exactly half the peak halfway through the decay.
  assert lr(3127 + (31279 - 3127) // 2) == pytest.approx(2.4, rel=1e-5)


def test_schedule_inside_tf_function_matches_numpy():
  schedule = opt_lib.build_learning_rate_schedule(1.0, "linear", 512, 976,
                                                  97657)
  steps = tf.constant([0, 500, 976, 50000, 97657], tf.int64)
  values = tf.function(lambda s: tf.map_fn(schedule, s, tf.float32))(steps)
  expected = [_numpy_lr(int(t), 2.0, 976, 97657) for t in steps.numpy()]
  np.testing.assert_allclose(values.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_schedule_without_warmup_is_finite_cosine():
  schedule = opt_lib.build_learning_rate_schedule(0.3, "linear", 512, 0, 10)
  values = np.array([float(schedule(t)) for t in range(12)])
  assert np.all(np.isfinite(values))
  expected = [_numpy_lr(t, 0.6, 0, 10) for t in range(12)]
  np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)
  assert values[0] == pytest.approx(0.6)


def test_schedule_validation():
  with pytest.raises(ValueError, match="total_steps"):
    opt_lib.build_learning_rate_schedule(0.3, "linear", 512, 10, 10)
  with pytest.raises(ValueError, match="warmup_steps"):
    opt_lib.build_learning_rate_schedule(0.3, "linear", 512, -1, 10)
  with pytest.raises(ValueError, match="scaling"):
    opt_lib.build_learning_rate_schedule(0.3, "cubic", 512, 1, 10)


# ---------------------------------------------------------------------------
# LARS against a NumPy implementation of SPEC §4.3.
# ---------------------------------------------------------------------------

# name -> (shape, initial values are zero?, excluded by role?)
_LARS_VARS = {
    "resnet/conv2d/kernel": ((3, 2), False, False),
    "resnet/batch_normalization/gamma": ((2,), False, True),
    "head_supervised/dense/kernel": ((2, 3), False, True),
    "projection/dense/bias": ((3,), False, True),
    # All-zero weights: ||w|| = 0 must give trust ratio 1, not 0.
    "projection/dense_1/kernel": ((2, 2), True, False),
}


def _lars_inputs(num_steps, seed=0):
  rng = np.random.default_rng(seed)
  init = {}
  grads = [{} for _ in range(num_steps)]
  for name, (shape, zero, _) in _LARS_VARS.items():
    init[name] = (np.zeros(shape) if zero else rng.normal(size=shape))
    for step in range(num_steps):
      grads[step][name] = 0.1 * rng.normal(size=shape)
  # A zero gradient on a decayed, adapted variable: ||g|| = 0 when no decay.
  grads[1]["resnet/conv2d/kernel"] = np.zeros((3, 2))
  return init, grads


def _numpy_lars(init, grads, lrs, weight_decay, momentum=0.9, eeta=1e-3,
                decay_after_ratio=False):
  """SPEC §4.3 in float64; `decay_after_ratio` is a deliberate mistake."""
  w = {k: v.copy() for k, v in init.items()}
  vel = {k: np.zeros_like(v) for k, v in init.items()}
  for step_grads, lr in zip(grads, lrs):
    for name, g in step_grads.items():
      excluded = _LARS_VARS[name][2]
      if not excluded and not decay_after_ratio:
        g = g + weight_decay * w[name]
      ratio = 1.0
      if not excluded:
        w_norm = np.linalg.norm(w[name])
        g_norm = np.linalg.norm(g)
        if w_norm > 0 and g_norm > 0:
          ratio = eeta * w_norm / g_norm
      if not excluded and decay_after_ratio:
        g = g + weight_decay * w[name]
      vel[name] = momentum * vel[name] + lr * ratio * g
      w[name] = w[name] - vel[name]
  return w


def _run_tf(optimizer, init, grads):
  variables = {
      name: tf.Variable(value.astype(np.float32), name=name)
      for name, value in init.items()
  }
  for step_grads in grads:
    optimizer.apply_gradients([
        (tf.constant(g.astype(np.float32)), variables[name])
        for name, g in step_grads.items()
    ])
  return {name: v.numpy() for name, v in variables.items()}


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
@pytest.mark.parametrize("use_schedule", [False, True])
def test_lars_matches_numpy(weight_decay, use_schedule):
  num_steps = 4
  init, grads = _lars_inputs(num_steps)
  if use_schedule:
    # Peak 5.0 = 0.5 * 2560 / 256; warmup 1 makes step 0 a zero-LR step, so
    # an off-by-one in the step fed to the schedule changes every result.
    learning_rate = opt_lib.build_learning_rate_schedule(
        0.5, "linear", 2560, warmup_steps=1, total_steps=4)
    lrs = [_numpy_lr(t, 5.0, 1, 4) for t in range(num_steps)]
    assert lrs == pytest.approx([0.0, 5.0, 3.75, 1.25])
  else:
    learning_rate = 5.0
    lrs = [5.0] * num_steps
  optimizer = opt_lib.build_optimizer(
      "lars", learning_rate, momentum=0.9, weight_decay=weight_decay)
  assert isinstance(optimizer, keras.optimizers.legacy.Optimizer)

  got = _run_tf(optimizer, init, grads)
  expected = _numpy_lars(init, grads, lrs, weight_decay)
  for name in init:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-6,
                               atol=1e-6, err_msg=name)
    # Every variable moved visibly, so the comparison is not vacuous.
    assert np.max(np.abs(got[name] - init[name])) > 1e-3, name
  assert int(optimizer.iterations) == num_steps

  if weight_decay:
    wrong = _numpy_lars(init, grads, lrs, weight_decay, decay_after_ratio=True)
    diff = np.max(np.abs(wrong["resnet/conv2d/kernel"] -
                         expected["resnet/conv2d/kernel"]))
    assert diff > 1e-4  # the test distinguishes decay-before-ratio


def test_lars_configuration():
  optimizer = opt_lib.build_optimizer("lars", 0.1, momentum=0.8,
                                      weight_decay=1e-4, eeta=0.002)
  assert optimizer.momentum == 0.8
  assert optimizer.weight_decay_rate == 1e-4
  assert optimizer.eeta == 0.002
  assert optimizer.nesterov is False
  assert optimizer.classic_momentum is True
  assert list(optimizer.exclude_from_weight_decay) == list(
      opt_lib.DEFAULT_EXCLUDE)
  assert list(optimizer.exclude_from_layer_adaptation) == list(
      opt_lib.DEFAULT_EXCLUDE)


def test_excluded_from_weight_decay_by_role():
  excluded = [
      "resnet/block_group2/bottleneck_block_3/batch_norm_relu_12/"
      "sync_batch_normalization_12/gamma:0",
      "resnet/batch_norm_relu/batch_normalization/beta:0",
      "projection_head/nl_2/dense_2/bias:0",
      "head_supervised/linear_layer/dense_3/kernel:0",
  ]
  included = [
      "resnet/block_group1/bottleneck_block/conv2d_fixed_padding_2/"
      "conv2d_2/kernel:0",
      "resnet/block_group1/bottleneck_block/sk__conv2d/conv2d_6/kernel:0",
      "projection_head/nl_0/dense/kernel:0",
  ]
  for name in excluded:
    assert opt_lib.excluded_from_weight_decay(name), name
  for name in included:
    assert not opt_lib.excluded_from_weight_decay(name), name
  variable = tf.Variable([1.0], name="projection/dense/bias")
  assert opt_lib.excluded_from_weight_decay(variable)
  assert not opt_lib.excluded_from_weight_decay(variable, patterns=("gamma",))


# ---------------------------------------------------------------------------
# Momentum (Nesterov) and Adam.
# ---------------------------------------------------------------------------


def test_momentum_optimizer_is_nesterov_sgd():
  optimizer = opt_lib.build_optimizer("momentum", 0.5, momentum=0.9,
                                      weight_decay=0.1)
  assert isinstance(optimizer, keras.optimizers.legacy.SGD)
  config = optimizer.get_config()
  assert config["nesterov"] is True
  assert config["momentum"] == pytest.approx(0.9)
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(4,))
  grads = [rng.normal(size=(4,)) for _ in range(3)]
  got = _run_tf(optimizer, {"resnet/conv2d/kernel": w0},
                [{"resnet/conv2d/kernel": g} for g in grads])
  # Nesterov in the Keras form; weight decay is not the optimizer's business.
  w, v = w0.copy(), np.zeros(4)
  for g in grads:
    v = 0.9 * v - 0.5 * g
    w = w + 0.9 * v - 0.5 * g
  np.testing.assert_allclose(got["resnet/conv2d/kernel"], w, rtol=1e-6,
                             atol=1e-6)


def test_adam_uses_keras_defaults():
  optimizer = opt_lib.build_optimizer("adam", 0.01)
  assert isinstance(optimizer, keras.optimizers.legacy.Adam)
  config = optimizer.get_config()
  assert config["beta_1"] == pytest.approx(0.9)
  assert config["beta_2"] == pytest.approx(0.999)
  assert config["epsilon"] == pytest.approx(1e-7)
  assert config["amsgrad"] is False
  rng = np.random.default_rng(2)
  w0 = rng.normal(size=(4,))
  grads = [rng.normal(size=(4,)) for _ in range(3)]
  got = _run_tf(optimizer, {"resnet/conv2d/kernel": w0},
                [{"resnet/conv2d/kernel": g} for g in grads])
  w, m, v = w0.copy(), np.zeros(4), np.zeros(4)
  for t, g in enumerate(grads, start=1):
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    lr_t = 0.01 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    w = w - lr_t * m / (np.sqrt(v) + 1e-7)
  np.testing.assert_allclose(got["resnet/conv2d/kernel"], w, rtol=1e-6,
                             atol=1e-6)


def test_build_optimizer_validation():
  with pytest.raises(ValueError, match="name"):
    opt_lib.build_optimizer("rmsprop", 0.1)
  with pytest.raises(ValueError, match="momentum"):
    opt_lib.build_optimizer("lars", 0.1, momentum=1.5)
  with pytest.raises(ValueError, match="weight_decay"):
    opt_lib.build_optimizer("lars", 0.1, weight_decay=-1.0)
  with pytest.raises(ValueError, match="learning_rate"):
    opt_lib.build_optimizer("adam", -0.1)
  with pytest.raises(ValueError, match="exclude_from_weight_decay"):
    opt_lib.build_optimizer("lars", 0.1, exclude_from_weight_decay="bias")


# ---------------------------------------------------------------------------
# Loss-side weight decay (SPEC §4.2, quirk Q8).
# ---------------------------------------------------------------------------


def _decay_variables():
  # Sum of 0.5 * ||v||^2 per variable written next to it.
  return [
      tf.Variable([[1.0, 2.0], [3.0, 4.0]], name="resnet/conv2d/kernel"),  # 15
      tf.Variable([2.0, 2.0], name="resnet/batch_normalization/gamma"),  # 4
      tf.Variable([1.0], name="resnet/sync_batch_normalization_3/beta"),  # .5
      tf.Variable([1.0, 1.0, 1.0], name="projection_head/dense/bias"),  # 1.5
      tf.Variable([[3.0], [4.0]], name="head_supervised/dense/kernel"),  # 12.5
      tf.Variable([6.0], name="head_supervised/dense/bias"),  # 18
  ]


def test_weight_decay_loss_selects_variables_by_optimizer():
  variables = _decay_variables()
  lars_loss = opt_lib.weight_decay_loss(variables, "lars", 0.1)
  assert float(lars_loss) == pytest.approx(1.25, rel=1e-6)  # 0.1 * 12.5
  for name in ("momentum", "adam"):
    loss = opt_lib.weight_decay_loss(variables, name, 0.1)
    # 0.1 * (15 + 1.5 + 12.5 + 18): everything except both BN variables.
    assert float(loss) == pytest.approx(4.7, rel=1e-6), name
  zero = opt_lib.weight_decay_loss(variables, "momentum", 0.0)
  assert isinstance(zero, tf.Tensor) and float(zero) == 0.0
  none_selected = opt_lib.weight_decay_loss(variables[:2], "lars", 0.1)
  assert float(none_selected) == 0.0
  with pytest.raises(ValueError, match="optimizer_name"):
    opt_lib.weight_decay_loss(variables, "sgd", 0.1)


# ---------------------------------------------------------------------------
# MirroredStrategy: cross-replica gradient aggregation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lars", "momentum", "adam"])
def test_mirrored_step_equals_single_device_mean_gradient(
    name, two_cpu_strategy):
  strategy = two_cpu_strategy
  assert strategy.num_replicas_in_sync == 2
  rng = np.random.default_rng(3)
  init = {
      "resnet/conv2d/kernel": rng.normal(size=(3, 2)),
      "resnet/batch_normalization/gamma": rng.normal(size=(2,)),
      "head_supervised/dense/kernel": rng.normal(size=(2, 3)),
  }
  num_steps = 2
  # per_replica[step][replica][name]
  per_replica = [[{k: 0.1 * rng.normal(size=v.shape) for k, v in init.items()}
                  for _ in range(2)] for _ in range(num_steps)]
  names = list(init)

  with strategy.scope():
    mirrored_vars = [
        tf.Variable(init[k].astype(np.float32), name=k) for k in names
    ]
    mirrored_opt = opt_lib.build_optimizer(name, 2.0, weight_decay=0.05)

  @tf.function
  def distributed_step(grads):

    def replica_fn(replica_grads):
      # Each replica contributes loss / R; the optimizer sums across replicas.
      mirrored_opt.apply_gradients(
          [(g / 2.0, v) for g, v in zip(replica_grads, mirrored_vars)])

    strategy.run(replica_fn, args=(grads,))

  for step in range(num_steps):

    def value_fn(ctx, step=step):
      grads = per_replica[step][ctx.replica_id_in_sync_group]
      return [tf.constant(grads[k].astype(np.float32)) for k in names]

    distributed_step(
        strategy.experimental_distribute_values_from_function(value_fn))

  single_opt = opt_lib.build_optimizer(name, 2.0, weight_decay=0.05)
  mean_grads = [{k: 0.5 * (step[0][k] + step[1][k]) for k in names}
                for step in per_replica]
  expected = _run_tf(single_opt, init, mean_grads)

  for k, var in zip(names, mirrored_vars):
    replica_values = [
        t.numpy() for t in strategy.experimental_local_results(var)
    ]
    assert len(replica_values) == 2
    for value in replica_values:
      np.testing.assert_allclose(value, expected[k], rtol=1e-6, atol=1e-6,
                                 err_msg=k)
    assert np.max(np.abs(replica_values[0] - init[k])) > 1e-3, k


@pytest.mark.parametrize("num_examples,replicas,batch", [
    (10, 1, 16),      # digits 1 %: the floor
    (143, 1, 64),     # digits 10 %: at most half the set
    (1438, 1, 256),   # all digits: the ceiling
    (12_811, 1, 256),  # ImageNet 1 %
    (143, 3, 63),     # divisible by the replicas
])
def test_small_set_batch_size(num_examples, replicas, batch):
  assert opt_lib.small_set_batch_size(num_examples, replicas) == batch
