"""Imports weights from SavedModels and checkpoints of the original SimCLR code.

The original (reference) code stores each variable under a checkpoint key that
is only meaningful through the `_CHECKPOINTABLE_OBJECT_GRAPH` proto saved next
to it (SPEC §8.5). `read_reference_object_graph` turns that graph into
structural paths such as
`model/resnet_model/block_groups/0/layers/0/conv2d_bn_layers/0/conv2d/kernel`
(SPEC §8.4). `reference_variable_pairs` is the explicit translation table from
those paths to the variables of a tf_simclr `SimCLRModel`, whose own layer
names stay independent of the reference's attribute names.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any, Iterator, Mapping, Optional, Sequence

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from tf_simclr import configs
from tf_simclr import paths
from tf_simclr.models import builder
from tf_simclr.models import heads
from tf_simclr.models import layers as layers_lib
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

# Object-graph edges that duplicate structure (flat variable lists, Keras
# bookkeeping, functions) rather than describe it.
_HELPER_EDGES = frozenset({
    "trainable_variables_list", "variables", "trainable_variables",
    "non_trainable_variables", "keras_api", "signatures", "__call__",
    "metrics", "layer_metrics", "regularization_losses",
    "layer_regularization_losses",
})
_HELPER_EDGE_PATTERN = re.compile(r"^layer(_with_weights)?-\d+$")

_MODEL = "model/"
_BACKBONE = "model/resnet_model/"
_STEM = _BACKBONE + "initial_conv_relu_max_pool/"
_PROJECTION_HEAD = "model/_projection_head/linear_layers/"
_SUPERVISED_HEAD = "model/supervised_head/linear_layer/dense/"
_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")

# Stem list indices of the reference's convolutions and batch norms (§1.5).
_STEM_INDICES = {
    configs.STEM_CIFAR: ((0,), (2,)),
    configs.STEM_IMAGENET: ((0,), (2,)),
    configs.STEM_RESNET_D: ((0, 2, 4), (1, 3, 6)),
}
_REFERENCE_SK_RATIO = 0.0625

ARCHITECTURE_KEYS = (
    "resnet_depth", "width_multiplier", "sk_ratio", "se_ratio", "stem",
    "shortcut", "num_proj_layers", "proj_out_dim", "ft_proj_selector",
    "num_classes", "image_size",
)


def _is_helper_edge(name: str) -> bool:
  return name in _HELPER_EDGES or bool(_HELPER_EDGE_PATTERN.match(name))


def read_reference_object_graph(path: Any) -> dict[str, str]:
  """Maps structural object paths to checkpoint keys.

  Walks the saved object graph breadth-first from the root through structural
  edges only, so each variable is reported under its first (shortest) path,
  e.g. 'model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel'.

  Args:
    path: SavedModel directory or checkpoint prefix/directory.

  Returns:
    {structural path (no '/.ATTRIBUTES/VARIABLE_VALUE' suffix): checkpoint
    key}, including non-model entries of training checkpoints (e.g.
    'global_step').
  """
  reader = paths.checkpoint_reader(paths.resolve_checkpoint(path))
  if not reader.has_tensor(OBJECT_GRAPH_KEY):
    raise ValueError(
        f"path must hold an object-based checkpoint ({OBJECT_GRAPH_KEY} "
        f"missing), got {os.fspath(path)!r}")
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
  keys = {}
  queue = collections.deque([(0, ())])
  visited = {0}
  while queue:
    node_id, node_path = queue.popleft()
    node = graph.nodes[node_id]
    for attribute in node.attributes:
      if attribute.name == "VARIABLE_VALUE":
        keys["/".join(node_path)] = attribute.checkpoint_key
    for child in node.children:
      if _is_helper_edge(child.local_name) or child.node_id in visited:
        continue
      visited.add(child.node_id)
      queue.append((child.node_id, node_path + (child.local_name,)))
  return keys


def is_reference_checkpoint(path: Any) -> bool:
  """Whether `path` holds a model of the original code (its ResNet's paths)."""
  try:
    return any(p.startswith(_BACKBONE)
               for p in read_reference_object_graph(path))
  except ValueError:  # No object graph: a name-based (TF1) checkpoint.
    return False


def supervised_head_kernel_shape(path: Any) -> Optional[list[int]]:
  """The shape of the original-code model's supervised-head kernel, if any."""
  prefix = paths.resolve_checkpoint(path)
  key = read_reference_object_graph(prefix).get(_SUPERVISED_HEAD + "kernel")
  if key is None:
    return None
  shape = paths.checkpoint_reader(prefix).get_variable_to_shape_map()[key]
  return [int(d) for d in shape]


def _strip_suffix(path: str) -> str:
  if path.endswith(VARIABLE_SUFFIX):
    return path[:-len(VARIABLE_SUFFIX)]
  return path


def _ratio_matching(widths: Sequence[tuple[int, int]], minimum: int,
                    preferred: Optional[float]) -> float:
  """A ratio r with max(int(f * r), minimum) == width for every (f, width)."""
  candidates = [] if preferred is None else [preferred]
  candidates += [width / f for f, width in sorted(widths, reverse=True)]
  for ratio in candidates:
    if all(max(int(f * ratio), minimum) == width for f, width in widths):
      return ratio
  raise ValueError(
      f"no single ratio reproduces the (filters, width) pairs {widths}")


def infer_architecture(paths_to_shapes: Mapping[str, Sequence[int]]
                       ) -> dict[str, Any]:
  """Infers the architecture of a reference model from its variable shapes.

  Args:
    paths_to_shapes: {structural path: shape} for the reference model's
      variables (the '/.ATTRIBUTES/VARIABLE_VALUE' suffix is optional).

  Returns:
    A dict with resnet_depth, width_multiplier, sk_ratio (0.0625 when every
    SK attention width is the 32 minimum, since any small ratio fits),
    se_ratio, stem, shortcut, proj_head_mode, num_proj_layers, proj_out_dim,
    ft_proj_selector (-1 when the supervised head can only sit on the
    projection output, else 0), num_classes (None without a supervised
    head) and has_supervised_head.
  """
  shapes = {_strip_suffix(k): [int(d) for d in v]
            for k, v in paths_to_shapes.items()}

  # Stem: which list indices hold convolutions, and the first kernel size.
  stem_convs = {}
  for key, shape in shapes.items():
    match = re.fullmatch(re.escape(_STEM) + r"(\d+)/conv2d/kernel", key)
    if match:
      stem_convs[int(match.group(1))] = shape
  if not stem_convs:
    raise ValueError(
        f"paths_to_shapes has no ResNet stem convolution ({_STEM}<i>/conv2d/"
        "kernel); is this a SimCLR model?")
  if 4 in stem_convs:
    stem = configs.STEM_RESNET_D
  elif stem_convs[min(stem_convs)][0] == 7:
    stem = configs.STEM_IMAGENET
  else:
    stem = configs.STEM_CIFAR
  stem_channels = stem_convs[max(stem_convs)][3]
  width = stem_channels / 64
  width_multiplier = int(width) if width.is_integer() else width

  # Blocks per group and block type.
  block_pattern = re.compile(
      re.escape(_BACKBONE) + r"block_groups/(\d+)/layers/(\d+)/(.*)")
  blocks = collections.defaultdict(int)
  bottleneck = False
  shortcut = configs.SHORTCUT_PROJECTION
  sk_widths, se_widths = [], []
  for key, shape in shapes.items():
    match = block_pattern.fullmatch(key)
    if not match:
      continue
    group, block = int(match.group(1)), int(match.group(2))
    rest = match.group(3)
    blocks[group] = max(blocks[group], block + 1)
    if rest.startswith("conv_relu_dropblock_layers/"):
      bottleneck = True
    if rest.endswith("/conv2d_0/kernel"):
      sk_widths.append((shape[2], shape[3]))
    if rest.endswith("se_reduce/kernel"):
      se_widths.append((shape[2], shape[3]))
    shortcut_match = re.fullmatch(
        r"(projection_layers|shortcut_layers)/(\d+)/conv2d/kernel", rest)
    if shortcut_match and int(shortcut_match.group(2)) > 0:
      shortcut = configs.SHORTCUT_RESNET_D
  counts = tuple(blocks[g] for g in range(4))
  depth = None
  for candidate, (is_bottleneck, per_group) in resnet.RESNET_SPECS.items():
    if is_bottleneck == bottleneck and per_group == counts:
      depth = candidate
  if depth is None:
    raise ValueError(
        f"paths_to_shapes has block counts {counts} (bottleneck="
        f"{bottleneck}) matching no ResNet depth")

  sk_ratio = 0.0
  if sk_widths:
    sk_ratio = _ratio_matching(sorted(set(sk_widths)), layers_lib.SK_MIN_DIM,
                               _REFERENCE_SK_RATIO)
  se_ratio = 0.0
  if se_widths:
    expansion = resnet.BOTTLENECK_EXPANSION if bottleneck else 1
    se_ratio = _ratio_matching(
        sorted({(c // expansion, w) for c, w in se_widths}), 1, None)

  # Projection head.
  proj_kernels = {}
  for key, shape in shapes.items():
    match = re.fullmatch(re.escape(_PROJECTION_HEAD) + r"(\d+)/dense/kernel",
                         key)
    if match:
      proj_kernels[int(match.group(1))] = shape
  num_proj_layers = len(proj_kernels)
  feature_dim = resnet.scaled_width(512, width_multiplier) * (
      resnet.BOTTLENECK_EXPANSION if bottleneck else 1)
  proj_out_dim = proj_kernels[num_proj_layers - 1][1] if proj_kernels else (
      feature_dim)

  # Supervised head.
  head_kernel = shapes.get(_SUPERVISED_HEAD + "kernel")
  ft_proj_selector = 0
  if head_kernel is not None and head_kernel[0] != feature_dim and (
      head_kernel[0] == proj_out_dim):
    ft_proj_selector = -1
  return {
      "resnet_depth": depth,
      "width_multiplier": width_multiplier,
      "sk_ratio": sk_ratio,
      "se_ratio": se_ratio,
      "stem": stem,
      "shortcut": shortcut,
      "proj_head_mode": (heads.PROJ_HEAD_NONLINEAR if num_proj_layers
                         else heads.PROJ_HEAD_NONE),
      "num_proj_layers": num_proj_layers,
      "proj_out_dim": proj_out_dim,
      "ft_proj_selector": ft_proj_selector,
      "num_classes": None if head_kernel is None else head_kernel[1],
      "has_supervised_head": head_kernel is not None,
  }


def _conv_pair(path: str, conv: layers_lib.Conv2dFixedPadding
               ) -> Iterator[tuple[str, tf.Variable]]:
  yield path + "conv2d/kernel", conv.conv.kernel


def _bn_pairs(path: str, bn_relu: layers_lib.BatchNormRelu
              ) -> Iterator[tuple[str, tf.Variable]]:
  bn = bn_relu.bn
  for weight in _BN_WEIGHTS:
    variable = getattr(bn, weight)
    if variable is not None:
      yield f"{path}bn/{weight}", variable


def _se_pairs(path: str, se: Optional[layers_lib.SqueezeExcitation]
              ) -> Iterator[tuple[str, tf.Variable]]:
  if se is None:
    return
  for name, conv in (("se_reduce", se.reduce_conv),
                     ("se_expand", se.expand_conv)):
    yield f"{path}{name}/kernel", conv.kernel
    yield f"{path}{name}/bias", conv.bias


def _shortcut_pairs(path: str, projection: Optional[resnet.ProjectionShortcut]
                    ) -> Iterator[tuple[str, tf.Variable]]:
  if projection is None:
    return
  # The reference's list holds [pad,] [avg pool,] conv, BN.
  if projection.pool is None:
    first = 0
  else:
    first = 1 if projection.strides == 1 else 2
  yield from _conv_pair(f"{path}{first}/", projection.conv)
  yield from _bn_pairs(f"{path}{first + 1}/", projection.bn)


def _basic_block_pairs(path: str, block: resnet.BasicBlock
                       ) -> Iterator[tuple[str, tf.Variable]]:
  branch = path + "conv2d_bn_layers/"
  yield from _conv_pair(branch + "0/", block.conv_1)
  yield from _bn_pairs(branch + "1/", block.bn_relu_1)
  yield from _conv_pair(branch + "2/", block.conv_2)
  yield from _bn_pairs(branch + "3/", block.bn_2)
  yield from _shortcut_pairs(path + "shortcut_layers/", block.projection)
  yield from _se_pairs(path + "se_layer/", block.squeeze_excitation)


def _bottleneck_block_pairs(path: str, block: resnet.BottleneckBlock
                            ) -> Iterator[tuple[str, tf.Variable]]:
  # Reference list positions include weightless DropBlock placeholders.
  branch = path + "conv_relu_dropblock_layers/"
  yield from _conv_pair(branch + "0/", block.conv_1)
  yield from _bn_pairs(branch + "1/", block.bn_relu_1)
  sk = block.selective_kernel
  if sk is not None:
    yield from _conv_pair(branch + "3/conv2d_fixed_padding/", sk.conv)
    yield from _bn_pairs(branch + "3/batch_norm_relu/", sk.bn_relu)
    yield branch + "3/conv2d_0/kernel", sk.reduce_conv.kernel
    yield from _bn_pairs(branch + "3/batch_norm_relu_1/", sk.reduce_bn_relu)
    yield branch + "3/conv2d_1/kernel", sk.expand_conv.kernel
    expand_index, se_index = 5, 8
  else:
    yield from _conv_pair(branch + "3/", block.conv_2)
    yield from _bn_pairs(branch + "4/", block.bn_relu_2)
    expand_index, se_index = 6, 9
  yield from _conv_pair(f"{branch}{expand_index}/", block.conv_3)
  yield from _bn_pairs(f"{branch}{expand_index + 1}/", block.bn_3)
  yield from _shortcut_pairs(path + "projection_layers/", block.projection)
  yield from _se_pairs(f"{branch}{se_index}/", block.squeeze_excitation)


def reference_variable_pairs(model: simclr_model.SimCLRModel
                             ) -> list[tuple[str, tf.Variable]]:
  """The translation table: (reference structural path, our variable) pairs.

  Args:
    model: a built tf_simclr `SimCLRModel` with a `resnet.ResNet` backbone.

  Returns:
    One pair per variable of `model`, in model order; paths follow the
    reference grammar of SPEC §8.4 without the '/.ATTRIBUTES/VARIABLE_VALUE'
    suffix.
  """
  if not isinstance(model, simclr_model.SimCLRModel) or not isinstance(
      model.backbone, resnet.ResNet):
    raise ValueError(
        f"model must be a SimCLRModel with a ResNet backbone, got {model!r}")
  if not model.built:
    raise ValueError("model must be built (call it once) before mapping")
  backbone = model.backbone
  pairs = []
  stem = backbone.stem_layer
  conv_indices, bn_indices = _STEM_INDICES[stem.stem]
  for index, conv in zip(conv_indices, stem.convs):
    pairs += _conv_pair(f"{_STEM}{index}/", conv)
  for index, bn_relu in zip(bn_indices, stem.bn_relus):
    pairs += _bn_pairs(f"{_STEM}{index}/", bn_relu)
  for g, group in enumerate(backbone.block_groups):
    for k, block in enumerate(group.blocks):
      path = f"{_BACKBONE}block_groups/{g}/layers/{k}/"
      if isinstance(block, resnet.BottleneckBlock):
        pairs += _bottleneck_block_pairs(path, block)
      else:
        pairs += _basic_block_pairs(path, block)
  head = model.projection_head
  for j, (dense, bn_relu) in enumerate(zip(head.dense_layers,
                                           head.bn_layers)):
    pairs.append((f"{_PROJECTION_HEAD}{j}/dense/kernel", dense.kernel))
    pairs += _bn_pairs(f"{_PROJECTION_HEAD}{j}/bn_relu/", bn_relu)
  if model.supervised_head is not None:
    dense = model.supervised_head.dense
    pairs.append((_SUPERVISED_HEAD + "kernel", dense.kernel))
    pairs.append((_SUPERVISED_HEAD + "bias", dense.bias))
  return pairs


def _variable_name(variable: tf.Variable) -> str:
  return variable.name.split(":")[0]


def load_reference_weights_into(model: simclr_model.SimCLRModel,
                                path: Any,
                                strict: bool = True,
                                include_supervised_head: bool = True
                                ) -> dict[str, list[str]]:
  """Assigns the weights of a reference SavedModel/checkpoint to `model`.

  Args:
    model: a tf_simclr `SimCLRModel` (built here with a dummy 32x32 batch if
      it has not been called yet).
    path: reference SavedModel directory or checkpoint prefix/directory.
    strict: require every model variable to get a source and every reference
      model variable a destination. When False, variables without a source
      keep their values and unused reference keys are ignored. Shape
      mismatches always raise.
    include_supervised_head: also load the supervised head; when False it
      keeps its initial values and the reference's head is ignored (e.g. to
      fine-tune on a different label set).

  Returns:
    {'loaded': our variable names assigned, 'missing': our variable names
    without a source, 'unused': reference paths not assigned}.

  Raises:
    ValueError: on a shape mismatch (naming the reference key, our variable
      and both shapes), or, with `strict`, on a missing source/destination.
  """
  if not isinstance(model, simclr_model.SimCLRModel):
    raise ValueError(f"model must be a SimCLRModel, got {model!r}")
  if not model.built:
    model(tf.zeros([1, 32, 32, 3]), training=False)
  prefix = paths.resolve_checkpoint(path)
  reference = {p: k for p, k in read_reference_object_graph(prefix).items()
               if p.startswith(_MODEL)}
  reader = paths.checkpoint_reader(prefix)
  reference_shapes = reader.get_variable_to_shape_map()
  if not include_supervised_head:
    reference = {p: k for p, k in reference.items()
                 if not p.startswith(_SUPERVISED_HEAD)}

  pairs = reference_variable_pairs(model)
  mapped = {id(v) for _, v in pairs}
  for variable in model.variables:
    if id(variable) not in mapped:
      raise ValueError(
          f"tf_simclr variable {_variable_name(variable)} has no entry in "
          "the reference translation table")
  if not include_supervised_head:
    pairs = [(p, v) for p, v in pairs if not p.startswith(_SUPERVISED_HEAD)]

  assignments, missing = [], []
  for ref_path, variable in pairs:
    if ref_path not in reference:
      if strict:
        raise ValueError(
            f"tf_simclr variable {_variable_name(variable)} has no source: "
            f"reference key {ref_path} is missing from {prefix}")
      missing.append(_variable_name(variable))
      continue
    ref_shape = list(reference_shapes[reference[ref_path]])
    if ref_shape != variable.shape.as_list():
      raise ValueError(
          f"reference key {ref_path} has shape {ref_shape} but tf_simclr "
          f"variable {_variable_name(variable)} has shape "
          f"{variable.shape.as_list()}")
    assignments.append((ref_path, variable))
  used = {p for p, _ in assignments}
  unused = sorted(set(reference) - used)
  if strict and unused:
    raise ValueError(
        f"reference key {unused[0]} (shape "
        f"{list(reference_shapes[reference[unused[0]]])}) has no destination "
        f"in the tf_simclr model ({len(unused)} unused keys)")
  for ref_path, variable in assignments:
    variable.assign(reader.get_tensor(reference[ref_path]))
  return {
      "loaded": [_variable_name(v) for _, v in assignments],
      "missing": missing,
      "unused": unused,
  }


def load_reference_saved_model(path: Any, **architecture: Any
                               ) -> simclr_model.SimCLRModel:
  """Builds a tf_simclr model holding the weights of a reference model.

  The architecture is inferred from the variable shapes
  (`infer_architecture`); keyword arguments override it. `image_size`, when
  given without `stem`, selects the stem the reference would use for that
  size (`configs.reference_stem`). The model has batch norms per replica
  (global_bn=False) and a supervised head only if the reference has one (or
  `num_classes` is given); it is not frozen.

  Args:
    path: reference SavedModel directory or checkpoint prefix/directory.
    **architecture: any of `ARCHITECTURE_KEYS`.

  Returns:
    The loaded `SimCLRModel`; call it as `model(images, training=False)`.

  Raises:
    ValueError: on unknown arguments or when the architecture does not match
      the stored variables (see `load_reference_weights_into`).
  """
  unknown = sorted(set(architecture) - set(ARCHITECTURE_KEYS))
  if unknown:
    raise ValueError(
        f"architecture arguments must be among {ARCHITECTURE_KEYS}, got "
        f"{unknown}")
  prefix = paths.resolve_checkpoint(path)
  reader = paths.checkpoint_reader(prefix)
  shapes = reader.get_variable_to_shape_map()
  paths_to_shapes = {
      p: shapes[k] for p, k in read_reference_object_graph(prefix).items()
      if p.startswith(_MODEL)
  }
  arch = infer_architecture(paths_to_shapes)
  image_size = architecture.pop("image_size", None)
  arch.update(architecture)
  if image_size is not None and "stem" not in architecture:
    arch["stem"] = configs.reference_stem(image_size, arch["sk_ratio"])
  has_head = arch["num_classes"] is not None
  model_config = configs.ModelConfig(
      resnet_depth=arch["resnet_depth"],
      width_multiplier=arch["width_multiplier"],
      sk_ratio=arch["sk_ratio"],
      se_ratio=arch["se_ratio"],
      stem=arch["stem"],
      shortcut=arch["shortcut"],
      global_bn=False)
  head_config = configs.HeadConfig(
      proj_head_mode=(heads.PROJ_HEAD_NONLINEAR if arch["num_proj_layers"]
                      else heads.PROJ_HEAD_NONE),
      num_proj_layers=max(1, arch["num_proj_layers"]),
      proj_out_dim=arch["proj_out_dim"],
      ft_proj_selector=arch["ft_proj_selector"],
      num_classes=arch["num_classes"] if has_head else 1,
      lineareval_while_pretraining=False)
  model = builder.build_model(
      model_config, head_config,
      builder.TRAIN_MODE_FINETUNE if has_head else builder.TRAIN_MODE_PRETRAIN)
  size = image_size or 32  # Any size creates the same variables.
  model(tf.zeros([1, size, size, 3]), training=False)
  load_reference_weights_into(model, prefix)
  return model
