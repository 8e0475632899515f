"""Deterministic, class-balanced label subsets (the paper's 1 % / 10 % labels)."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def _stable_rank_key(example_id: str, seed: int) -> bytes:
  # A hash of (seed, id) orders examples identically on every machine and
  # Python version, independent of the order the source yields them in.
  return hashlib.sha256(f"{seed}:{example_id}".encode("utf-8")).digest()


def class_balanced_subset(labels: Sequence[int],
                          fraction: float,
                          seed: int = 0,
                          example_ids: Sequence[str] | None = None
                          ) -> np.ndarray:
  """Indices of a class-balanced subset holding `fraction` of the examples.

  Each class keeps max(1, round(fraction * class_count)) examples, chosen by a
  seeded hash of the example id (the index when `example_ids` is None), so the
  same images are picked on every run and every machine.

  Args:
    labels: integer label of every example of the split.
    fraction: share of each class to keep, in (0, 1].
    seed: selects a different but equally deterministic subset.
    example_ids: stable per-example ids (file names, tfds ids).

  Returns:
    Sorted int64 indices into `labels`.

  Raises:
    ValueError: if `fraction` is outside (0, 1] or the ids don't match labels.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  labels = np.asarray(labels)
  if example_ids is None:
    example_ids = [str(i) for i in range(len(labels))]
  if len(example_ids) != len(labels):
    raise ValueError(
        f"example_ids has {len(example_ids)} entries but labels has "
        f"{len(labels)}")
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    keep = max(1, int(round(fraction * len(members))))
    ranked = sorted(members,
                    key=lambda i: _stable_rank_key(str(example_ids[i]), seed))
    chosen.extend(ranked[:keep])
  return np.sort(np.asarray(chosen, dtype=np.int64))


def per_class_counts(labels: Sequence[int], indices: np.ndarray) -> dict:
  """{label: count} of the subset, for logging."""
  values, counts = np.unique(np.asarray(labels)[indices], return_counts=True)
  return {int(v): int(c) for v, c in zip(values, counts)}
