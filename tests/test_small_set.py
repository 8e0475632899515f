"""Fine-tuning choices derived from the labelled set's size."""

import dataclasses

import numpy as np
import pytest

from tf_simclr import configs
from tf_simclr.data import sources
from tf_simclr.data import subsets
from tf_simclr.training import small_set


def test_quotas_count_the_fraction_of_the_whole_split():
  # The embedded digits' training split: 1 % is 14 examples, not 10.
  _, labels = sources.DigitsSource().example_index("train")
  counts = np.bincount(labels)
  quotas = subsets.class_quotas(counts, 0.01)
  assert quotas.sum() == 14
  assert set(quotas.tolist()) == {1, 2}
  # The four extra examples go to the largest remainders (largest classes).
  assert np.all(counts[quotas == 2] >= counts[quotas == 1].max())
  assert subsets.class_quotas(counts, 0.1).sum() == 144


def test_quotas_spread_by_largest_remainder_and_keep_one_per_class():
  np.testing.assert_array_equal(
      subsets.class_quotas([100, 90, 80, 70, 60, 50, 40, 30, 20, 10], 0.1),
      [10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
  # 0.1 * [15, 15, 15]: 4.5 in all -> 4 (round half to even); the one extra
  # example goes to the first of the tied remainders.
  np.testing.assert_array_equal(subsets.class_quotas([15, 15, 15], 0.1),
                                [2, 1, 1])
  np.testing.assert_array_equal(subsets.class_quotas([100, 1, 1], 0.01),
                                [1, 1, 1])
  np.testing.assert_array_equal(subsets.class_quotas([3, 2], 1.0), [3, 2])


@pytest.mark.parametrize("counts, fraction, match", [
    ([10, 10], 0.0, "fraction must be in"),
    ([10, 10], 1.5, "fraction must be in"),
    ([10, 0], 0.1, "every class count must be an integer >= 1, got 0"),
    ([], 0.1, "class_counts must be a non-empty"),
])
def test_quotas_reject_bad_arguments(counts, fraction, match):
  with pytest.raises(ValueError, match=match):
    subsets.class_quotas(counts, fraction)


def test_small_sets_train_a_linear_classifier_on_the_frozen_encoder():
  frozen = {"fine_tune_after_block": 4, "ft_proj_selector": 0,
            "weight_decay": 0.01}
  assert small_set.small_set_finetune(10, 10) == frozen   # digits, 1 %
  assert small_set.small_set_finetune(14, 10) == frozen
  assert small_set.small_set_finetune(49, 10) == frozen
  assert small_set.small_set_finetune(50, 10) == {}
  assert small_set.small_set_finetune(144, 10) == {}      # digits, 10 %
  assert small_set.small_set_finetune(12811, 1000) == {}  # ImageNet 1 %
  with pytest.raises(ValueError, match="num_labelled must be an integer >= 1, "
                     "got 0"):
    small_set.small_set_finetune(0, 10)


def _finetune_config(**train):
  return configs.ExperimentConfig(
      head=configs.HeadConfig(ft_proj_selector=1, num_classes=10),
      train=configs.TrainConfig(train_mode="finetune", **train))


def test_resolve_freezes_small_sets_unless_the_user_chose():
  cfg = _finetune_config()
  small = small_set.resolve_small_set_finetune(cfg, 14)
  assert (small.train.fine_tune_after_block, small.head.ft_proj_selector,
          small.optimizer.weight_decay) == (4, 0, 0.01)
  assert small.model == cfg.model and small.data == cfg.data
  assert small_set.resolve_small_set_finetune(cfg, 144) == cfg
  kept = small_set.resolve_small_set_finetune(
      cfg, 14, explicit={"ft_proj_selector", "weight_decay"})
  assert (kept.train.fine_tune_after_block, kept.head.ft_proj_selector,
          kept.optimizer.weight_decay) == (4, 1, cfg.optimizer.weight_decay)
  supervised = dataclasses.replace(
      cfg, train=dataclasses.replace(cfg.train, train_mode="supervised"))
  assert small_set.resolve_small_set_finetune(supervised, 14) == supervised
