"""Label subsets, the k-NN monitor and the linear probe."""

import numpy as np
import pytest

from tf_simclr.data import subsets
from tf_simclr.training import evaluation


def test_subset_is_class_balanced_and_deterministic():
  labels = np.repeat(np.arange(10), [100, 90, 80, 70, 60, 50, 40, 30, 20, 10])
  ids = [f"img_{i:04d}.jpg" for i in range(len(labels))]
  first = subsets.class_balanced_subset(labels, 0.1, seed=3, example_ids=ids)
  again = subsets.class_balanced_subset(labels, 0.1, seed=3, example_ids=ids)
  np.testing.assert_array_equal(first, again)
  counts = subsets.per_class_counts(labels, first)
  assert counts == {0: 10, 1: 9, 2: 8, 3: 7, 4: 6, 5: 5, 6: 4, 7: 3, 8: 2,
                    9: 1}
  other_seed = subsets.class_balanced_subset(labels, 0.1, seed=4,
                                             example_ids=ids)
  assert not np.array_equal(first, other_seed)


def test_subset_follows_ids_not_order():
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  ids = [f"f{i}" for i in range(8)]
  chosen = subsets.class_balanced_subset(labels, 0.5, seed=0, example_ids=ids)
  order = np.arange(8)[::-1]
  chosen_reversed = subsets.class_balanced_subset(
      labels[order], 0.5, seed=0, example_ids=[ids[i] for i in order])
  assert sorted(ids[i] for i in chosen) == sorted(
      ids[order[i]] for i in chosen_reversed)


def test_subset_keeps_at_least_one_per_class():
  labels = np.array([0, 1, 1, 2, 2, 2])
  chosen = subsets.class_balanced_subset(labels, 0.01)
  assert subsets.per_class_counts(labels, chosen) == {0: 1, 1: 1, 2: 1}


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_subset_rejects_bad_fraction(fraction):
  with pytest.raises(ValueError, match="fraction"):
    subsets.class_balanced_subset([0, 1], fraction)


def _numpy_knn(train, train_y, test, k, temperature, num_classes):
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  predictions = []
  for row in test:
    sims = train @ row
    nearest = np.argsort(-sims, kind="stable")[:k]
    votes = np.zeros(num_classes)
    for j in nearest:
      votes[train_y[j]] += np.exp(sims[j] / temperature)
    predictions.append(np.argmax(votes))
  return np.array(predictions)


def test_knn_matches_numpy_reference():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 16))
  train_y = rng.integers(0, 4, 200)
  test_y = rng.integers(0, 4, 50)
  train = centres[train_y] + 1.5 * rng.normal(size=(200, 16))
  test = centres[test_y] + 1.5 * rng.normal(size=(50, 16))
  expected = np.mean(_numpy_knn(train, train_y, test, 20, 0.1, 4) == test_y)
  got = evaluation.knn_top1(train, train_y, test, test_y, 4, k=20,
                            temperature=0.1, chunk=7)
  assert got == pytest.approx(expected)
  assert 0.5 < got < 1.0  # informative features but not trivially separable


def test_linear_probe_separates_separable_classes():
  rng = np.random.default_rng(1)
  train_y = np.repeat(np.arange(3), 30)
  test_y = np.repeat(np.arange(3), 10)
  shift = np.eye(3, 8) * 5
  train = shift[train_y] + rng.normal(size=(90, 8))
  test = shift[test_y] + rng.normal(size=(30, 8))
  assert evaluation.linear_probe_top1(train, train_y, test, test_y) > 0.9
  noise = rng.normal(size=(90, 8))
  assert evaluation.linear_probe_top1(noise, train_y, rng.normal(
      size=(30, 8)), test_y) < 0.7
