"""Evaluation: classifier top-1/top-5, frozen-feature probes and k-NN monitor."""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_simclr.training import common

TOP_1 = "label_top_1_accuracy"
TOP_5 = "label_top_5_accuracy"
EVAL_EXAMPLES = "eval_examples"


def _per_replica(fn, jit_compile: bool):
  """`fn` for `strategy.run`, XLA-compiled separately in each replica.

  One compiled function shared by the replicas would be traced once, on the
  first replica's device, and keep reading that replica's variables.
  """
  return lambda batch: common.maybe_xla(fn, jit_compile)(batch)


def evaluate_classifier(strategy: tf.distribute.Strategy,
                        model: keras.Model,
                        distributed_dataset,
                        logits_key: str,
                        steps: int = -1,
                        jit_compile: bool = False) -> dict:
  """Top-1/top-5 of `model(...)[logits_key]` over a distributed eval dataset.

  Each example is weighted by its mask, so padding (see
  `pipelines.build_eval_dataset`) is never counted.

  Args:
    strategy: the strategy the model lives in.
    model: returns a dict holding `logits_key`.
    distributed_dataset: elements {"image", "label", "mask"}, one pass.
    logits_key: output key of the classifier logits.
    steps: number of batches, -1 for the whole dataset.
    jit_compile: XLA-compile the per-replica step. Safe under any number of
      replicas: the step has no cross-replica op (metrics are per replica
      until read).

  Returns:
    {TOP_1: float, TOP_5: float, EVAL_EXAMPLES: int examples counted}.
  """
  with strategy.scope():
    top1 = keras.metrics.SparseCategoricalAccuracy()
    top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5)
    count = keras.metrics.Sum(dtype=tf.float32)

  def update(batch):
    logits = model(batch["image"], training=False)[logits_key]
    top1.update_state(batch["label"], logits, sample_weight=batch["mask"])
    top5.update_state(batch["label"], logits, sample_weight=batch["mask"])
    count.update_state(batch["mask"])

  @tf.function
  def step(batch):
    strategy.run(_per_replica(update, jit_compile), args=(batch,))

  for i, batch in enumerate(distributed_dataset):
    if 0 <= steps <= i:
      break
    step(batch)
  return {TOP_1: float(top1.result()), TOP_5: float(top5.result()),
          EVAL_EXAMPLES: int(round(float(count.result())))}


def extract_features(strategy: tf.distribute.Strategy,
                     model: keras.Model,
                     distributed_dataset,
                     feature_key: str,
                     jit_compile: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Inference-mode features and labels of every (unmasked) example.

  Each replica computes its batch's features under `strategy.run`; the
  replicas' outputs are gathered in replica order, which for one input
  pipeline is the dataset's order, and padding is dropped by its mask.

  Args:
    strategy: the strategy the model lives in.
    model: `model(images, training=False)` returns a dict with `feature_key`.
    distributed_dataset: elements {"image", "label", "mask"}, one pass
      (`pipelines.build_eval_dataset` through the strategy).
    feature_key: output key of the features.
    jit_compile: XLA-compile the per-replica forward pass.

  Returns:
    (features [n, d], labels [n]) as NumPy arrays.
  """

  def forward(batch):
    return (model(batch["image"], training=False)[feature_key],
            batch["label"], batch["mask"])

  @tf.function
  def step(batch):
    outputs = strategy.run(_per_replica(forward, jit_compile), args=(batch,))
    return [strategy.gather(value, axis=0) for value in outputs]

  features, labels = [], []
  for batch in distributed_dataset:
    batch_features, batch_labels, mask = (v.numpy() for v in step(batch))
    keep = mask > 0
    features.append(batch_features[keep])
    labels.append(batch_labels[keep])
  return np.concatenate(features), np.concatenate(labels)


def knn_top1(train_features: np.ndarray, train_labels: np.ndarray,
             test_features: np.ndarray, test_labels: np.ndarray,
             num_classes: int, k: int = 200, temperature: float = 0.1,
             chunk: int = 512) -> float:
  """Weighted k-NN top-1 on cosine similarity (a label-free quality monitor).

  Each test point takes its k most similar training points; a neighbour votes
  for its class with weight exp(similarity / temperature).
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")

  def normalise(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

  train = normalise(train_features.astype(np.float32))
  test = normalise(test_features.astype(np.float32))
  k = min(k, len(train))
  correct = 0
  for start in range(0, len(test), chunk):
    sims = test[start:start + chunk] @ train.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    weights = np.exp(top_sims / temperature)
    votes = np.zeros((len(top), num_classes), np.float64)
    np.add.at(votes, (np.arange(len(top))[:, None], train_labels[top]),
              weights)
    correct += int(np.sum(votes.argmax(1) == test_labels[start:start + chunk]))
  return correct / max(1, len(test))


def linear_probe_top1(train_features: np.ndarray, train_labels: np.ndarray,
                      test_features: np.ndarray, test_labels: np.ndarray,
                      train_indices: Optional[np.ndarray] = None,
                      max_iter: int = 2000) -> float:
  """Top-1 of an L2-regularised logistic regression on frozen features."""
  from sklearn.linear_model import LogisticRegression  # heavy; import late.
  from sklearn.preprocessing import StandardScaler

  if train_indices is not None:
    train_features = train_features[train_indices]
    train_labels = train_labels[train_indices]
  scaler = StandardScaler().fit(train_features)
  classifier = LogisticRegression(max_iter=max_iter)
  classifier.fit(scaler.transform(train_features), train_labels)
  predictions = classifier.predict(scaler.transform(test_features))
  return float(np.mean(predictions == test_labels))


def raw_pixel_features(dataset: tf.data.Dataset,
                       batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Flattened source pixels in [0, 1] and labels: the no-learning baseline.

  Images are taken at the first image's size (others resized to it), and as
  one channel when every image is grey (sources replicate grey images to
  three channels; three copies of a pixel would only weaken the probe's
  regularisation).

  Args:
    dataset: one pass of {"image": uint8 [H, W, C], "label"} examples, in
      the order of the features the probe is compared with.
    batch_size: examples converted at a time.
  """
  first = next(iter(dataset.take(1)))["image"]
  height, width = int(first.shape[0]), int(first.shape[1])

  def to_pixels(example):
    image = tf.cast(example["image"], tf.float32) / 255.0
    image = tf.image.resize(image, [height, width])
    return image, example["label"]

  images, labels = [], []
  for x, y in dataset.map(to_pixels).batch(batch_size):
    images.append(x.numpy())
    labels.append(y.numpy())
  images, labels = np.concatenate(images), np.concatenate(labels)
  if np.array_equal(images[..., :1].repeat(images.shape[-1], axis=-1), images):
    images = images[..., :1]
  return images.reshape(len(images), -1), labels


# Result keys of the frozen-feature monitors (see `stages.Stage.evaluate`).
KNN_TOP_1 = "knn_top_1_accuracy"
PRETRAINED = "pretrained"
RANDOM_INIT = "random_init"
RAW_PIXELS = "raw_pixels"


def probe_key(fraction: float, features: str) -> str:
  """Result key of a linear probe's top-1 on `features` (e.g. PRETRAINED)."""
  return f"probe_{fraction:g}_{features}_top_1"


def probe_count_key(fraction: float) -> str:
  """Result key of the number of labels a probe at `fraction` trained on."""
  return f"probe_{fraction:g}_num_labels"


def probe_summary(results: dict) -> str | None:
  """One line putting each probe next to its baselines, and k-NN; or None."""
  parts = []
  fractions = sorted({float(k.split("_")[1]) for k in results
                      if k.startswith("probe_") and k.endswith("_num_labels")})
  for fraction in fractions:
    scores = " / ".join(
        f"{results[probe_key(fraction, name)]:.3f}"
        if probe_key(fraction, name) in results else "n/a"
        for name in (PRETRAINED, RANDOM_INIT, RAW_PIXELS))
    parts.append(f"{fraction:.0%} labels "
                 f"({results[probe_count_key(fraction)]}) {scores}")
  if parts:
    parts[0] = ("linear probe top-1, pretrained / random init / raw pixels: "
                + parts[0])
  if KNN_TOP_1 in results:
    parts.append(f"k-NN top-1 {results[KNN_TOP_1]:.3f}")
  return " | ".join(parts) or None
