"""Choosing the tf.distribute strategy."""

from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf

DISTRIBUTIONS = ("mirrored", "multi_worker", "one_device", "tpu")


def build_strategy(distribution: str = "mirrored",
                   tpu_name: Optional[str] = None,
                   *,
                   tpu_zone: Optional[str] = None,
                   gcp_project: Optional[str] = None,
                   master: Optional[str] = None) -> tf.distribute.Strategy:
  """Returns the strategy for `distribution`.

  Args:
    distribution: 'mirrored' (all local GPUs, else the CPU), 'multi_worker'
      (MultiWorkerMirroredStrategy configured from the TF_CONFIG environment
      variable), 'one_device' (first GPU or the CPU) or 'tpu'.
    tpu_name: TPU name or grpc address for 'tpu'; None (and no `master`)
      uses the environment's default resolver (e.g. on a Cloud TPU VM).
    tpu_zone: GCE zone of the TPU named by `tpu_name`; None lets the resolver
      find it from the VM's metadata.
    gcp_project: GCP project of the TPU; None: the VM's project.
    master: grpc://HOST:PORT address of the TPU, instead of `tpu_name`.

  Raises:
    ValueError: for an unknown distribution or a missing/invalid TF_CONFIG.
  """
  if distribution == "mirrored":
    return tf.distribute.MirroredStrategy()
  if distribution == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if distribution == "multi_worker":
    raw = os.environ.get("TF_CONFIG")
    if not raw:
      raise ValueError(
          "--distribution=multi_worker needs the TF_CONFIG environment "
          "variable (cluster and task), got none")
    try:
      json.loads(raw)
    except json.JSONDecodeError as e:
      raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()
  if distribution == "tpu":
    if tpu_name and master:
      raise ValueError(
          f"give tpu_name or master, not both; got tpu_name={tpu_name!r} and "
          f"master={master!r}")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu_name or master or "", zone=tpu_zone, project=gcp_project)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(
      f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the one worker that writes summaries, results and exports."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type in (None, "chief") or (
      task_type == "worker" and task_id == 0 and
      "chief" not in resolver.cluster_spec().as_dict())


def is_single_worker(strategy: tf.distribute.Strategy) -> bool:
  """True unless the cluster has more than one chief/worker task."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return True
  cluster = resolver.cluster_spec().as_dict()
  return sum(len(tasks) for name, tasks in cluster.items()
             if name in ("chief", "worker")) <= 1


def preemption_cluster_resolver(
    strategy: tf.distribute.Strategy
) -> Optional[tf.distribute.cluster_resolver.ClusterResolver]:
  """The resolver the workers agree on a preemption step through, or None.

  Set for multi-worker `MultiWorkerMirroredStrategy` runs only: a single
  worker needs no agreement, and `PreemptionCheckpointHandler` does not
  handle TPU pods off Google's internal platform.
  """
  if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and
      not is_single_worker(strategy)):
    return strategy.cluster_resolver
  return None


def check_global_batch(global_batch_size: int,
                       strategy: tf.distribute.Strategy,
                       name: str = "train_batch_size") -> int:
  """Returns the per-replica batch or raises if it does not divide evenly."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise ValueError(
        f"{name} must be divisible by the {replicas} replicas in sync, got "
        f"{global_batch_size}")
  return global_batch_size // replicas
