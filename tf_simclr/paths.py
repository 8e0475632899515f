"""Paths on any file system TensorFlow reaches: local, file://, gs://, ram://.

Every file the package reads or writes goes through `tf.io.gfile`, so a path
may be a plain local path or a URI. The few operations only a local disk has
(free space, an atomic directory rename) ask `local_path` first.
"""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

_FILE_SCHEME = "file://"


def local_path(path: "str | os.PathLike[str]") -> Optional[str]:
  """The OS path of `path` when it is on the local disk, else None.

  A path without a scheme is local, and so is a `file:///abs/path` URI;
  any other scheme (gs://, s3://, ram://, ...) is not.
  """
  path = os.fspath(path)
  if path.startswith(_FILE_SCHEME):
    return path[len(_FILE_SCHEME):]
  if "://" in path:
    return None
  return path


def split(path: "str | os.PathLike[str]") -> tuple[str, str]:
  """(parent, name) of `path`; the parent of `ram://x` is `ram://`.

  `os.path.split` would cut a URI's scheme in two ("ram:", "x"), giving a
  parent that is a relative local path.
  """
  path = os.fspath(path).rstrip("/")
  scheme, separator, rest = path.partition("://")
  if not separator:
    return os.path.split(path)
  parent, name = os.path.split(rest)
  return f"{scheme}://{parent}", name


def list_files(directory: str) -> list[str]:
  """Paths of every file under `directory`, relative to it, sorted."""
  directory = os.fspath(directory).rstrip("/")
  files = []
  for root, _, names in tf.io.gfile.walk(directory):
    # On gs:// a sub-directory's name keeps its trailing slash.
    relative = root[len(directory):].strip("/")
    # ram:// also lists, in "a", the remainders of siblings that share its
    # prefix ("b" for "ab/..."): names that do not exist there are dropped.
    files.extend(os.path.join(relative, name) for name in names
                 if tf.io.gfile.exists(os.path.join(root, name)))
  return sorted(files)


def remove_tree(directory: str) -> None:
  """`tf.io.gfile.rmtree`, tolerating the phantom names ram:// lists.

  rmtree deletes everything it can and then reports the first failure; on
  ram:// that is a phantom sibling remainder (see `list_files`) that never
  existed, which is not an error when nothing real is left.
  """
  try:
    tf.io.gfile.rmtree(directory)
  except tf.errors.NotFoundError:
    if list_files(directory):
      raise


def checkpoint_reader(prefix: str):
  """`tf.train.load_checkpoint` for a checkpoint prefix already resolved.

  load_checkpoint first asks whether its argument is a directory, and
  ram:// says yes for any prefix of a file name ("ckpt-4" of
  "ckpt-4.index").
  """
  return tf.compat.v1.train.NewCheckpointReader(prefix)


class CheckpointNotFoundError(FileNotFoundError, ValueError):
  """Nothing restorable at a path.

  A missing file, and also a bad argument: `except ValueError` in callers
  that validate their arguments catches it too.
  """


def resolve_checkpoint(path: "str | os.PathLike[str]") -> str:
  """The checkpoint prefix `path` stands for.

  `path` is a checkpoint prefix (`model_dir/ckpt-100`: its `.index` file
  exists), a directory holding checkpoints (its latest, as its `checkpoint`
  file says) or a SavedModel directory (its `variables/variables`).
  `models.loading` exports this as `loading.resolve_checkpoint`; it lives here
  because `models.reference_import`, which `loading` builds on, needs it too.

  Raises:
    CheckpointNotFoundError: naming `path` when it is none of these.
  """
  path = os.fspath(path)
  # The prefix test comes first: ram:// calls "ckpt-4" a directory when
  # "ckpt-4.index" exists.
  if tf.io.gfile.exists(path + ".index"):
    return path
  expected = ("path must be a checkpoint prefix, a directory holding "
              "checkpoints or a SavedModel directory")
  if not tf.io.gfile.isdir(path):
    raise CheckpointNotFoundError(
        f"{expected}; nothing is at {path!r} (no {path}.index either)")
  saved_model_variables = os.path.join(path, "variables", "variables")
  if tf.io.gfile.exists(saved_model_variables + ".index"):
    return saved_model_variables
  latest = tf.train.latest_checkpoint(path)
  if latest is None:
    raise CheckpointNotFoundError(
        f"{expected}; directory {path!r} holds no checkpoint (no "
        "'checkpoint' file naming an existing one) and no SavedModel")
  return latest
