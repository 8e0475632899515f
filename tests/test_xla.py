"""XLA readiness without a TPU: compiled steps equal the plain ones.

TPUStrategy compiles each replica's whole step with XLA. Here every stage's
`replica_step` (forward, backward, optimizer update, metric and memory-bank
updates, in-step blur) is traced once and run twice from the same state on the
same batch: as a plain graph and compiled with `jit_compile=True`. Its
statistics, the gradients it applies and every variable afterwards must agree.
The eval and feature steps are compared under one and two replicas, on a split
that is not a multiple of the batch.

Tolerances, relative to the largest magnitude of what is compared: XLA fuses
and reorders float32 reductions (convolutions, batch-norm statistics, the
NT-Xent log-sum-exp), so results differ in the last bits. Measured worst
cases: stats 1.8e-6, all gradients together 6.3e-6 (RTOL = 1e-4); a single
tensor (a batch-norm gamma gradient summed with cancellation, and the momentum
slot that holds it) 1.2e-4 (TENSOR_RTOL = 1e-3). As a control, the compiled
step on slightly different images moves the gradients by more than 1e-2.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr.data import pipelines
from tf_simclr.data import sources
from tf_simclr.models import builder
from tf_simclr.models import memory_bank
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model
from tf_simclr.training import distill
from tf_simclr.training import evaluation
from tf_simclr.training import finetune
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import pretrain

SIZE = 16
BATCH = 8
CLASSES = 4
# The unfused batch-norm graph: XLA's expansion of the fused kernel and
# oneDNN's fused kernel round a cancelling gamma gradient differently (1.2e-3
# relative), above TENSOR_RTOL. The fused kernel is compared with the unfused
# graph in test_batch_norm.py.
MODEL = configs.ModelConfig(resnet_depth=18, width_multiplier=0.0625,
                            global_bn=False, fused_batch_norm=False)
HEAD = configs.HeadConfig(proj_out_dim=16, num_classes=CLASSES)
# Relative to the largest magnitude of each compared tensor (see above).
RTOL = 1e-4
TENSOR_RTOL = 1e-3
# Ops that would run host-side Python inside a replica function.
HOST_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _model(train_mode, frozen=-1, head=HEAD):
  model = builder.build_model(MODEL, head, train_mode,
                              frozen_through_block=frozen)
  model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  return model


def _images(rng, n=BATCH):
  return rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32)


def _labels(n=BATCH):
  return (np.arange(n) % CLASSES).astype(np.int32)


def _optimizer():
  return optimizer_lib.build_optimizer("lars", 0.5, momentum=0.9,
                                       weight_decay=1e-4)


def _pretrainer(memory_size=0):
  keras.utils.set_random_seed(0)
  model = _model("pretrain")
  memory = {}
  if memory_size:
    twin = _model("pretrain", head=configs.HeadConfig(
        proj_out_dim=16, num_classes=CLASSES,
        lineareval_while_pretraining=False))
    memory = {"momentum_encoder": memory_bank.MomentumEncoder(twin),
              "negative_queue": memory_bank.NegativeQueue(memory_size, 16)}
    memory["momentum_encoder"].initialize_from(model)
  trainer = pretrain.PretrainTrainer(
      tf.distribute.get_strategy(), model, _optimizer(), None,
      optimizer_name="lars", weight_decay=1e-4, temperature=0.1,
      blur_image_size=SIZE, seed=3, memory_momentum=0.9,
      **memory)
  return trainer, model, memory


def _finetuner():
  keras.utils.set_random_seed(0)
  model = _model("finetune", frozen=2)
  trainer = finetune.FinetuneTrainer(
      tf.distribute.get_strategy(), model, _optimizer(), None,
      optimizer_name="lars", weight_decay=1e-4)
  return trainer, model, {}


def _distiller():
  keras.utils.set_random_seed(0)
  teacher = _model("finetune")
  student = _model("distill")
  trainer = distill.DistillTrainer(
      tf.distribute.get_strategy(), teacher, student, _optimizer(),
      {distill.UNLABELLED: None, distill.LABELLED: None},
      num_classes=CLASSES, optimizer_name="lars", weight_decay=1e-4,
      temperature=0.5, distill_label_weight=0.3)
  return trainer, student, {"teacher": teacher}


def _variables(trainer, model, extra):
  """Every variable a step may change."""
  variables = list(model.variables) + list(trainer.optimizer.variables())
  for obj in extra.values():
    variables += list(obj.variables)
  for metric in trainer.metrics.values():
    variables += list(metric.variables)
  return variables


def _max_relative_difference(compiled, plain):
  compiled = np.asarray(compiled, np.float64)
  plain = np.asarray(plain, np.float64)
  scale = max(float(np.max(np.abs(plain))), 1e-6)
  return float(np.max(np.abs(compiled - plain))) / scale


def _assert_close(compiled, plain, what, worst, rtol=None):
  difference = _max_relative_difference(compiled, plain)
  kind = what.split(":")[0]
  worst[kind] = max(worst.get(kind, 0.0), difference)
  assert difference <= (rtol or RTOL), (
      f"{what}: max |xla - plain| / max |plain| = {difference:.2e}")


def _assert_no_host_ops(concrete_function):
  graph_def = concrete_function.graph.as_graph_def()
  types = {node.op for node in graph_def.node}
  for function in graph_def.library.function:  # Loop and cond bodies.
    types |= {node.op for node in function.node_def}
  assert "AssignVariableOp" in types and not types & HOST_OPS, (
      types & HOST_OPS)


def _step_returning_gradients(trainer):
  """`trainer.replica_step` that also returns the gradients it applied."""

  def step(batch):
    captured = []
    forward_backward = trainer._forward_backward

    def spy(*args):
      gradients, stats = forward_backward(*args)
      captured.append(gradients)
      return gradients, stats

    trainer._forward_backward = spy
    try:
      stats = trainer.replica_step(batch)
    finally:
      trainer._forward_backward = forward_backward
    return stats, captured[0]

  return step


def _check_stage(make, batch):
  """One whole replica step, compiled vs plain, from the same state.

  Both runs execute the same traced graph (traced once: tracing R18 costs as
  much as compiling it), once as a plain graph and once compiled by XLA;
  every variable is reset in between.

  Returns:
    {what: worst relative difference}, and how many of the model's variables
    the step changed out of how many.
  """
  worst = {}
  trainer, model, extra = make()
  step = tf.function(_step_returning_gradients(trainer)).get_concrete_function(
      batch)
  _assert_no_host_ops(step)
  variables = _variables(trainer, model, extra)  # Slots exist once traced.
  start = [v.numpy() for v in variables]
  plain_stats, plain_grads = step(batch)
  plain_after = [v.numpy() for v in variables]
  for variable, value in zip(variables, start):
    variable.assign(value)
  compiled = tf.function(step, jit_compile=True)
  xla_stats, xla_grads = compiled(batch)

  assert set(xla_stats) == set(plain_stats)
  for key in plain_stats:
    _assert_close(xla_stats[key], plain_stats[key], f"stats: {key}", worst)
  trainable = model.trainable_variables
  assert len(xla_grads) == len(plain_grads) == len(trainable)
  # Variables the loss does not reach (e.g. the projection head when
  # fine-tuning from the backbone) have no gradient either way.
  assert [g is None for g in xla_grads] == [g is None for g in plain_grads]
  pairs = [(gx, gp, v) for gx, gp, v in zip(xla_grads, plain_grads, trainable)
           if gp is not None]
  assert len(pairs) > 10
  # Gradients: the largest difference against the largest gradient, and each
  # tensor against its own largest entry (looser: a tensor of small entries
  # summed with cancellation keeps fewer significant bits).
  _assert_close(np.concatenate([np.ravel(gx) for gx, _, _ in pairs]),
                np.concatenate([np.ravel(gp) for _, gp, _ in pairs]),
                "gradients: all", worst)
  for g_xla, g_plain, v in pairs:
    _assert_close(g_xla, g_plain, f"gradient per tensor: {v.name}", worst,
                  TENSOR_RTOL)
  # Per variable, as momentum slots hold one tensor's gradient.
  for variable, after in zip(variables, plain_after):
    _assert_close(variable.numpy(), after, f"state: {variable.name}", worst,
                  TENSOR_RTOL)
  moved = sum(not np.array_equal(v.numpy(), s)
              for v, s in zip(model.variables, start))
  assert int(trainer.optimizer.iterations.numpy()) == 1

  # The tolerance tells steps apart: slightly other images (the compiled
  # step is reused, same shapes) move the gradients far beyond it.
  for variable, value in zip(variables, start):
    variable.assign(value)
  rng = np.random.default_rng(9)
  nudged = tf.nest.map_structure(
      lambda t: t + rng.uniform(0, 0.05, t.shape).astype(np.float32)
      if t.dtype == tf.float32 else t, batch)
  _, nudged_grads = compiled(nudged)
  control = _max_relative_difference(
      np.concatenate([np.ravel(g) for g in nudged_grads if g is not None]),
      np.concatenate([np.ravel(g) for _, g, _ in pairs]))
  worst["control (nudged images)"] = control
  assert control > 100 * RTOL
  print({k: f"{v:.1e}" for k, v in worst.items()})
  return worst, moved, len(model.variables)


# ---------------------------------------------------------- training steps


def _pretrain_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"view1": tf.constant(_images(rng)), "view2": tf.constant(_images(rng)),
          "label": tf.constant(_labels())}


@pytest.mark.slow  # R18 traced once and XLA-compiled: 13-33 s of CPU.
@pytest.mark.parametrize("memory_size", [0, 12])
def test_pretrain_step_with_blur_compiles_and_matches(memory_size):
  batch = _pretrain_batch()
  _, moved, total = _check_stage(lambda: _pretrainer(memory_size), batch)
  assert moved > total // 2


@pytest.mark.slow  # R18 traced once and XLA-compiled: 13-33 s of CPU.
def test_finetune_step_with_frozen_blocks_compiles_and_matches():
  batch = {"image": tf.constant(_images(np.random.default_rng(1))),
           "label": tf.constant(_labels())}
  _, moved, total = _check_stage(_finetuner, batch)
  # The stem and block groups 1-2 are frozen; their weights stay put.
  assert 0 < moved < total


@pytest.mark.slow  # R18 traced once and XLA-compiled: 13-33 s of CPU.
def test_distill_step_with_labels_compiles_and_matches():
  rng = np.random.default_rng(2)
  batch = {part: {"image": tf.constant(_images(rng)),
                  "label": tf.constant(_labels())}
           for part in (distill.UNLABELLED, distill.LABELLED)}
  _, moved, total = _check_stage(_distiller, batch)
  assert moved > total // 2


# ------------------------------------------------------------------ eval


DIGITS_TEST = 359  # Not a multiple of any global batch used here.


@pytest.mark.parametrize("devices", [["/cpu:0"], ["/cpu:0", "/cpu:1"]],
                         ids=["1_replica", "2_replicas"])
def test_eval_counts_every_example_once_and_xla_matches_plain(devices):
  strategy = tf.distribute.MirroredStrategy(devices)
  digits = sources.get_source("digits")
  assert digits.num_examples("test") == DIGITS_TEST
  head = configs.HeadConfig(proj_out_dim=16, num_classes=digits.num_classes)
  with strategy.scope():
    keras.utils.set_random_seed(1)
    model = _model("finetune", head=head)
  global_batch = 16  # 22 full batches and 7 examples.
  dataset = strategy.distribute_datasets_from_function(
      lambda ctx: pipelines.build_eval_dataset(
          digits, "test",
          per_replica_batch_size=ctx.get_per_replica_batch_size(global_batch),
          image_size=SIZE, input_context=ctx))

  # NumPy over every example of the split, in order, unpadded.
  everything = pipelines.build_eval_dataset(
      digits, "test", per_replica_batch_size=DIGITS_TEST + 1, image_size=SIZE)
  whole = next(iter(everything))
  real = whole["mask"].numpy() > 0
  images, labels = whole["image"].numpy()[real], whole["label"].numpy()[real]
  assert len(labels) == DIGITS_TEST
  outputs = model(images, training=False)
  logits = outputs[simclr_model.LOGITS_SUP].numpy()
  rank = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(1)
  expected_top1 = float(np.mean(logits.argmax(1) == labels))
  expected_top5 = float(np.mean(rank < 5))
  assert 0 < expected_top1 < expected_top5 < 1

  for jit_compile in (False, True):
    results = evaluation.evaluate_classifier(
        strategy, model, dataset, simclr_model.LOGITS_SUP,
        jit_compile=jit_compile)
    assert results[evaluation.EVAL_EXAMPLES] == DIGITS_TEST
    assert results[evaluation.TOP_1] == pytest.approx(expected_top1, abs=1e-6)
    assert results[evaluation.TOP_5] == pytest.approx(expected_top5, abs=1e-6)

  # Features under the strategy, compiled, in split order, padding dropped.
  features, feature_labels = evaluation.extract_features(
      strategy, model, dataset, resnet.FINAL_AVG_POOL, jit_compile=True)
  np.testing.assert_array_equal(feature_labels, labels)
  expected = outputs[resnet.FINAL_AVG_POOL].numpy()
  assert _max_relative_difference(features, expected) <= RTOL
