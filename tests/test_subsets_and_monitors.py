"""Label subsets, the k-NN monitor and the linear probe."""

import numpy as np
import pytest

from tf_simclr.data import pipelines
from tf_simclr.data import sources
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


# -------------------------------------------- labelled subsets of a source ---


@pytest.fixture(scope="module")
def digits():
  return sources.DigitsSource()


def test_fraction_subset_is_deterministic_balanced_and_logged(digits):
  lines = []
  first = subsets.select_labelled_examples(digits, "train",
                                            label_fraction=0.1, seed=0,
                                            print_fn=lines.append)
  again = subsets.select_labelled_examples(digits, "train",
                                            label_fraction=0.1, seed=0,
                                            print_fn=lambda _: 0)
  other = subsets.select_labelled_examples(digits, "train",
                                            label_fraction=0.1, seed=1,
                                            print_fn=lambda _: 0)
  assert first.ids == again.ids
  assert first.ids != other.ids
  ids, labels = digits.example_index("train")
  class_sizes = np.bincount(labels, minlength=10)
  # round(0.1 * 1438) = 144 in all, by largest remainder over the classes.
  expected = dict(enumerate(subsets.class_quotas(class_sizes, 0.1).tolist()))
  assert first.per_class_counts == expected
  assert other.per_class_counts == expected
  assert list(expected.values()) == [14, 15, 14, 15, 15, 15, 14, 14, 14, 14]
  assert len(first.ids) == 144
  assert first.num_split_examples == len(ids) == 1438
  label_of = dict(zip(ids, labels))
  assert [label_of[i] for i in first.ids] == list(first.labels)
  assert np.bincount(first.labels).tolist() == [expected[c] for c in range(10)]
  assert "144 of 1438" in lines[0]
  assert f"0: {expected[0]}" in lines[0] and f"9: {expected[9]}" in lines[0]


def test_subset_source_reads_only_the_subset(digits):
  subset = subsets.labelled_subset_source(digits, "train", label_fraction=0.05,
                                           seed=3, print_fn=lambda _: 0)
  expected = subsets.select_labelled_examples(
      digits, "train", label_fraction=0.05, seed=3, print_fn=lambda _: 0)
  assert subset.num_examples("train") == len(expected.ids) == 72
  read = [e["id"].decode() for e in subset.make_dataset(
      "train", shuffle_files=True, seed=1).as_numpy_iterator()]
  assert sorted(read) == sorted(expected.ids)
  assert subset.num_examples("test") == digits.num_examples("test") == 359
  assert subset.example_index("train")[0] == list(expected.ids)
  batches = pipelines.build_finetune_dataset(
      subset, "train", per_replica_batch_size=16, image_size=8).take(10)
  labels = np.concatenate([b["label"] for b in batches.as_numpy_iterator()])
  # 160 draws from a 70-example subset: every class, in the subset's shares.
  assert len(labels) == 160
  assert set(labels) == set(range(10))


def test_subset_file_ids_and_unknown_ids(digits, tmp_path):
  ids, labels = digits.example_index("train")
  path = tmp_path / "subset.txt"
  path.write_text(f"# chosen by hand\n{ids[7]}\n\n{ids[2]}  # a comment\n"
                  f"{ids[7]}\n")
  subset = subsets.select_labelled_examples(
      digits, "train", label_subset_file=str(path), print_fn=lambda _: 0)
  assert subset.ids == (ids[2], ids[7])  # split order, duplicates dropped
  assert list(subset.labels) == [labels[2], labels[7]]
  assert sum(subset.per_class_counts.values()) == 2
  bad = tmp_path / "bad.txt"
  bad.write_text(f"{ids[0]}\nno_such_image.png\n99999\n")
  with pytest.raises(ValueError, match="'no_such_image.png', '99999'"):
    subsets.select_labelled_examples(digits, "train",
                                      label_subset_file=str(bad),
                                      print_fn=lambda _: 0)


class _FolderLikeSource(sources.DigitsSource):
  """Digits with image-folder style ids, for file-name matching."""

  def example_index(self, split):
    return (["train/a/x.png", "train/b/y.png", "train/a/z.png",
             "train/b/z.png"], np.asarray([0, 1, 0, 1], np.int32))


def test_subset_file_matches_unique_file_names(tmp_path):
  source = _FolderLikeSource()
  path = tmp_path / "names.txt"
  path.write_text("y.png\ntrain/a/z.png\n")
  subset = subsets.select_labelled_examples(
      source, "train", label_subset_file=str(path), print_fn=lambda _: 0)
  assert subset.ids == ("train/b/y.png", "train/a/z.png")
  path.write_text("z.png\n")
  with pytest.raises(ValueError, match="several"):
    subsets.select_labelled_examples(
        source, "train", label_subset_file=str(path), print_fn=lambda _: 0)


def test_subset_argument_errors(digits, tmp_path):
  with pytest.raises(ValueError, match="exactly one"):
    subsets.select_labelled_examples(digits, "train", print_fn=lambda _: 0)
  with pytest.raises(ValueError, match="exactly one"):
    subsets.select_labelled_examples(digits, "train", label_fraction=0.1,
                                      label_subset_file="x.txt")
  with pytest.raises(ValueError, match="label_fraction"):
    subsets.select_labelled_examples(digits, "train", label_fraction=1.5)
  with pytest.raises(ValueError, match="does not exist"):
    subsets.select_labelled_examples(
        digits, "train", label_subset_file=str(tmp_path / "missing.txt"))
  with pytest.raises(ValueError, match="not in split"):
    subsets.SubsetSource(digits, "train", ["0", "nope"])


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
