"""`run.py` with a deterministic pretraining input, for multi-process tests.

Every global batch is a fixed function of the step (stateless random images,
view 2 = view 1 mirrored, label = row % 10), and each input pipeline yields
its replicas' contiguous rows of it. A one-replica run and an N-worker run
therefore train on the same global batches, which the real pipeline does not
promise: each worker shuffles and augments its own shard.

  TF_CONFIG=... python tests/deterministic_run.py --distribution=multi_worker ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402

import run  # noqa: E402
from tf_simclr.data import pipelines  # noqa: E402

NUM_CLASSES = 10


def deterministic_pretrain_dataset(source, split, *, per_replica_batch_size,
                                   image_size, input_context=None,
                                   start_batch=0, **unused):
  del source, split, unused
  pipelines_count = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  replicas = input_context.num_replicas_in_sync if input_context else 1
  replicas_per_pipeline = replicas // pipelines_count
  global_batch = per_replica_batch_size * replicas

  def element(index):
    step = index // replicas_per_pipeline
    replica = pipeline_id * replicas_per_pipeline + index % replicas_per_pipeline
    images = tf.random.stateless_uniform(
        [global_batch, image_size, image_size, 3],
        seed=tf.stack([step, tf.constant(17, tf.int64)]))
    start = replica * per_replica_batch_size
    view1 = tf.reshape(images[start:start + per_replica_batch_size],
                       [per_replica_batch_size, image_size, image_size, 3])
    rows = start + tf.range(per_replica_batch_size, dtype=tf.int64)
    return {"view1": view1, "view2": tf.image.flip_left_right(view1),
            "label": tf.cast(rows % NUM_CLASSES, tf.int32)}

  # Infinite, as the real pipeline: a finite dataset makes the distributed
  # iterator drop static batch shapes under MultiWorkerMirroredStrategy.
  return tf.data.Dataset.counter(start_batch).map(element)


if __name__ == "__main__":
  pipelines.build_pretrain_dataset = deterministic_pretrain_dataset
  app.run(run.main)
