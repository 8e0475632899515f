"""Training throughput and memory benchmark for tf_simclr.

Builds the trainer run.py builds, through the same `stages.Stage` (pretrain
or finetune under the chosen tf.distribute strategy, LARS with the warm-up +
cosine schedule, the optional memory bank), runs warm-up steps that absorb
tracing and XLA compilation, then times `--steps` steps, `--steps_per_loop`
per `trainer.train` call. `--stage=pipeline` times the stage's training input
pipeline alone.

  python bench/bench_train.py --stage=pretrain --jit_compile=off --steps=3
  python bench/bench_train.py --stage=pipeline --dataset=synthetic
  python bench/bench_train.py --compare=jit_compile=off,on --steps=3

Every run prints one human-readable line and one JSON line (`{"bench": ...}`).
Images/s counts each source image once (global batch x steps / seconds): a
pretraining step on batch B pushes 2B views through the network but counts B.
Peak RSS is `ru_maxrss`, the peak of the whole process (model build and
compilation included); `steady_peak_rss_gb` is the peak over the timed steps
alone (Linux VmHWM after resetting it through /proc/self/clear_refs).

`--compare=NAME=A,B` runs the other arguments twice (or `--compare_repeats`
times each, interleaved A B A B), each run in a fresh subprocess with
`--NAME=A` / `--NAME=B`, and prints the B/A ratios. A is the baseline. Every
speed claim should be such a back-to-back ratio on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

STAGES = ("pretrain", "finetune", "pipeline")
DATASETS = ("digits", "image_folder", "synthetic")
_GB = 1024.0**3
_JSON_KEY = "bench"


def _on_off(text: str) -> bool:
  value = text.strip().lower()
  if value in ("on", "true", "1", "yes"):
    return True
  if value in ("off", "false", "0", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected on/off, got {text!r}")


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
  return value


def _non_negative_int(text: str) -> int:
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
  return value


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--stage", choices=STAGES, default="pretrain")
  p.add_argument("--pipeline_stage", choices=("pretrain", "finetune"),
                 default="pretrain",
                 help="which training pipeline --stage=pipeline times")
  p.add_argument("--resnet_depth", type=int, default=18)
  p.add_argument("--width_multiplier", type=float, default=1.0)
  p.add_argument("--sk_ratio", type=float, default=0.0)
  p.add_argument("--se_ratio", type=float, default=0.0)
  p.add_argument("--image_size", type=_positive_int, default=32)
  p.add_argument("--batch_size", type=_positive_int, default=256,
                 help="global batch (source images per step)")
  p.add_argument("--use_blur", type=_on_off, default=False)
  p.add_argument("--color_jitter_strength", type=float, default=0.5)
  p.add_argument("--min_crop_area", type=float, default=0.08,
                 help="pretraining crops' minimum area (run.py's flag)")
  p.add_argument("--pretrain_image_size", type=_non_negative_int, default=0,
                 help="pretraining view side; 0: --image_size (run.py's flag)")
  p.add_argument("--jit_compile", type=_on_off, default=False,
                 help="XLA forward/backward (single replica only, as run.py)")
  p.add_argument("--memory_size", type=_non_negative_int, default=0)
  p.add_argument("--memory_momentum", type=float, default=0.999)
  p.add_argument("--prefill_memory", type=_on_off, default=True,
                 help="fill the negative queue before timing, so the timed "
                 "steps see its steady-state size")
  p.add_argument("--fine_tune_after_block", type=int, default=-1)
  p.add_argument("--steps", type=_positive_int, default=3,
                 help="timed steps")
  p.add_argument("--warmup_steps", type=_positive_int, default=2,
                 help="untimed steps first (tracing, compilation, allocator growth; 1 left the first timed R18 step ~1.8x slow)")
  p.add_argument("--dataset", choices=DATASETS, default="digits")
  p.add_argument("--data_dir", default=None,
                 help="image folder root for --dataset=image_folder")
  p.add_argument("--split", default="train")
  p.add_argument("--synthetic_examples", type=_positive_int, default=2048)
  p.add_argument("--cache_dataset", type=_on_off, default=False)
  p.add_argument("--input", choices=("live", "frozen"), default="live",
                 help="frozen: repeat the first batch, taking the input "
                 "pipeline out of the step time")
  p.add_argument("--distribution", choices=("mirrored", "one_device"),
                 default="mirrored")
  p.add_argument("--fused_bn", type=_on_off, default=True,
                 help="training-mode 4-D batch norms through the fused kernel "
                 "(same maths; on is the library default, off the unfused "
                 "Keras graph the original code runs)")
  p.add_argument("--precision", default="float32",
                 choices=("float32", "mixed_bfloat16", "mixed_float16"),
                 help="run.py's --precision")
  p.add_argument("--steps_per_loop", type=_positive_int, default=1,
                 help="steps per timed trainer call (run.py's "
                 "--steps_per_loop); --steps must be a multiple")
  p.add_argument("--recompute_block_groups", type=int, choices=range(5),
                 default=0,
                 help="recompute block groups 1..k in the backward pass")
  p.add_argument("--intra_op_threads", type=_non_negative_int, default=0,
                 help="0 = TensorFlow default")
  p.add_argument("--inter_op_threads", type=_non_negative_int, default=0,
                 help="0 = TensorFlow default")
  p.add_argument("--onednn", choices=("default", "on", "off"),
                 default="default", help="TF_ENABLE_ONEDNN_OPTS")
  p.add_argument("--flops", type=_on_off, default=False,
                 help="estimate FLOPs with the tf.compat.v1 profiler on the "
                 "traced forward pass (training step ~ 3 x forward)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--label", default="", help="free-form tag for the output")
  p.add_argument("--compare", default=None, metavar="NAME=A,B",
                 help="run twice in subprocesses with --NAME=A (baseline) "
                 "and --NAME=B and print the ratios")
  p.add_argument("--compare_repeats", type=_positive_int, default=1)
  return p


# ----------------------------------------------------------------------------
# Memory and machine state


def _proc_status_kb(field: str) -> Optional[int]:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  """Resets VmHWM (Linux >= 4.0); False when unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_rss_gb() -> float:
  # ru_maxrss is in KiB on Linux (bytes on macOS).
  scale = 1.0 if sys.platform == "darwin" else 1024.0
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / _GB


def _kb_to_gb(value: Optional[int]) -> Optional[float]:
  return None if value is None else value * 1024.0 / _GB


def _load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


# ----------------------------------------------------------------------------
# Synthetic data


def make_synthetic_source(image_size: int, num_examples: int, seed: int):
  """An in-memory DataSource of random uint8 images (reading costs ~nothing)."""
  import numpy as np
  import tensorflow as tf
  from tf_simclr.data import sources

  class SyntheticSource(sources.DataSource):
    """Random uint8 images and labels held in memory.

    Args:
      image_size: side length of the stored images.
      num_examples: examples per split.
      seed: NumPy seed of the pixels and labels.
    """

    def __init__(self, image_size: int, num_examples: int, seed: int):
      rng = np.random.default_rng(seed)
      self.image_size = image_size
      self.num_examples_per_split = num_examples
      self.seed = seed
      self.name = "synthetic"
      self.num_classes = 10
      self.class_names = tuple(str(c) for c in range(10))
      self.split_names = ("test", "train")
      self._images = rng.integers(
          0, 256, size=(num_examples, image_size, image_size, 3),
          dtype=np.uint8)
      self._labels = rng.integers(0, 10, size=num_examples).astype(np.int32)

    def num_examples(self, split: str) -> int:
      self._check_split(split)
      return self.num_examples_per_split

    def example_index(self, split: str):
      self._check_split(split)
      return ([str(i) for i in range(self.num_examples_per_split)],
              self._labels.copy())

    def make_records(self, split: str, *, shuffle_files: bool = False,
                     input_context=None, seed=None) -> tf.data.Dataset:
      self._check_split(split)
      index = np.arange(self.num_examples_per_split)
      if input_context is not None:
        index = index[input_context.input_pipeline_id::
                      input_context.num_input_pipelines]
      dataset = tf.data.Dataset.from_tensor_slices({
          "image": self._images[index],
          "label": self._labels[index],
          "id": np.asarray([str(i) for i in index]),
      })
      if shuffle_files:
        dataset = dataset.shuffle(len(index), seed=seed,
                                  reshuffle_each_iteration=True)
      return dataset

  return SyntheticSource(image_size, num_examples, seed)


def _make_source(args):
  from tf_simclr.data import sources
  if args.dataset == "synthetic":
    return make_synthetic_source(args.image_size, args.synthetic_examples,
                                 args.seed)
  if args.dataset == "image_folder" and not args.data_dir:
    raise ValueError("--dataset=image_folder needs --data_dir")
  return sources.get_source(args.dataset, args.data_dir)


# ----------------------------------------------------------------------------
# Configuration; the trainer comes from the stage, as in run_experiment


def _experiment_config(args, train_mode: str, num_classes: int):
  from tf_simclr import configs
  model = configs.ModelConfig(
      resnet_depth=args.resnet_depth,
      width_multiplier=args.width_multiplier,
      sk_ratio=args.sk_ratio,
      se_ratio=args.se_ratio,
      stem=configs.reference_stem(args.image_size, args.sk_ratio),
      shortcut=configs.reference_shortcut(args.sk_ratio),
      global_bn=True,
      fused_batch_norm=args.fused_bn,
      recompute_block_groups=args.recompute_block_groups)
  return configs.ExperimentConfig(
      model=model,
      head=configs.HeadConfig(num_classes=num_classes),
      loss=configs.LossConfig(temperature=0.2, memory_size=args.memory_size,
                              memory_momentum=args.memory_momentum),
      data=configs.DataConfig(
          dataset=args.dataset, data_dir=args.data_dir,
          train_split=args.split, image_size=args.image_size,
          color_jitter_strength=args.color_jitter_strength,
          # The original code's augmentation, whatever the default preset.
          min_crop_area=args.min_crop_area,
          finetune_min_crop_area=args.min_crop_area, horizontal_flip=True,
          pretrain_image_size=args.pretrain_image_size,
          use_blur=args.use_blur, cache_dataset=args.cache_dataset,
          seed=args.seed),
      optimizer=configs.OptimizerConfig(
          optimizer="lars", learning_rate=1.0, warmup_epochs=2.0,
          weight_decay=1e-4),
      train=configs.TrainConfig(
          train_mode=train_mode, train_batch_size=args.batch_size,
          train_steps=100_000, distribution=args.distribution,
          precision=args.precision,
          jit_compile=args.jit_compile,
          fine_tune_after_block=args.fine_tune_after_block, seed=args.seed))


def _count_fused_batch_norms(model) -> int:
  """How many tf_simclr batch norms would take the fused training kernel."""
  from tf_simclr.models import layers
  return sum(1 for layer in model.submodules
             if isinstance(layer, layers.BatchNormalization) and
             layer.fused_training)


def _variable_bytes(variables) -> int:
  return int(sum(v.shape.num_elements() * v.dtype.size for v in variables))


def _estimate_forward_flops(model, image_size: int) -> Optional[float]:
  """FLOPs of one image through the model (training-mode graph), or None."""
  import tensorflow as tf
  try:
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 3], tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # The v1 profiler warns about v1 APIs it uses.
    try:
      profile = tf.compat.v1.profiler.profile(graph, options=options)
    finally:
      logger.setLevel(level)
    return float(profile.total_float_ops)
  except Exception as e:  # pylint: disable=broad-except
    print(f"FLOP estimate failed: {type(e).__name__}: {e}", file=sys.stderr)
    return None


def _frozen(dataset):
  # One real batch, then the same tensors forever: the step sees no input cost.
  return dataset.take(1).cache().repeat()


def _build_trainer(args, strategy, source, stage_name: str, result: dict):
  import numpy as np
  from tf_simclr.training import experiment
  from tf_simclr.training import pretrain
  from tf_simclr.training import stages

  cfg = _experiment_config(args, stage_name, source.num_classes)
  stage = stages.get(stage_name)
  source = stage.training_source(cfg, source)
  schedule = experiment.compute_schedule(
      cfg, source.num_examples(stage.training_split(cfg)))
  state = stage.build(cfg, strategy, schedule)
  model, memory = state.model, state.extras
  result["fused_batch_norm_layers"] = _count_fused_batch_norms(model)
  result["model_params"] = int(sum(
      v.shape.num_elements() for v in model.trainable_variables))
  result["model_variable_bytes"] = _variable_bytes(model.variables)
  if memory:
    queue = memory[stages.NEGATIVE_QUEUE]
    encoder = memory[stages.MOMENTUM_ENCODER]
    result["queue_bytes"] = _variable_bytes(queue.variables)
    result["momentum_encoder_bytes"] = _variable_bytes(encoder.model.variables)
    if args.prefill_memory:
      rng = np.random.default_rng(args.seed)
      keys = rng.standard_normal((queue.size, queue.dim)).astype(np.float32)
      keys /= np.linalg.norm(keys, axis=1, keepdims=True)
      queue.keys.assign(keys)
      queue.filled.assign(queue.size)
  if args.flops:
    forward = _estimate_forward_flops(model, cfg.data.image_size)
    if forward is not None:
      result["forward_flops_per_image"] = forward
      views = 2 if stage_name == "pretrain" else 1
      # Backward ~ 2x forward; the momentum encoder adds a forward of view 1.
      per_image = 3 * views * forward + (forward if memory else 0)
      result["train_flops_per_source_image"] = per_image

  trainer = stage.make_trainer(
      cfg, strategy, state, source,
      input_transform=_frozen if args.input == "frozen" else None)
  result["jit_effective"] = bool(trainer.jit_compile)
  return trainer, state.optimizer, pretrain.TOTAL_LOSS


def _run_training(args, result: dict) -> None:
  import tensorflow as tf
  import tf_keras as keras
  from tf_simclr.training import strategy as strategy_lib

  keras.utils.set_random_seed(args.seed)
  strategy = strategy_lib.build_strategy(args.distribution)
  strategy_lib.check_global_batch(args.batch_size, strategy)
  result["replicas"] = strategy.num_replicas_in_sync
  source = _make_source(args)
  start = time.perf_counter()
  trainer, optimizer, loss_key = _build_trainer(args, strategy, source,
                                                args.stage, result)
  result["build_seconds"] = round(time.perf_counter() - start, 2)
  result["rss_after_build_gb"] = _kb_to_gb(_proc_status_kb("VmRSS"))

  start = time.perf_counter()
  outputs = trainer.train(tf.constant(args.warmup_steps, tf.int32))
  warm_loss = float(outputs[loss_key])
  result["warmup_seconds"] = round(time.perf_counter() - start, 2)
  result["peak_rss_after_warmup_gb"] = _peak_rss_gb()

  reset = _reset_peak_rss()
  times = []
  losses = []
  per_call = args.steps_per_loop
  for _ in range(args.steps // per_call):
    start = time.perf_counter()
    outputs = trainer.train(tf.constant(per_call, tf.int32))
    losses.append(float(outputs[loss_key]))  # Forces completion.
    times.append((time.perf_counter() - start) / per_call)
  total = sum(times) * per_call
  result.update(
      steps_done=int(optimizer.iterations.numpy()),
      seconds_per_step=total / args.steps,
      median_seconds_per_step=statistics.median(times),
      min_seconds_per_step=min(times),
      step_seconds=[round(x, 3) for x in times],
      images_per_sec=args.batch_size * args.steps / total,
      loss_first=warm_loss, loss_last=losses[-1],
      steady_peak_rss_gb=_kb_to_gb(_proc_status_kb("VmHWM")) if reset
      else None)
  if "train_flops_per_source_image" in result:
    result["gflops_per_sec"] = (result["train_flops_per_source_image"] *
                                result["images_per_sec"] / 1e9)


def _run_pipeline(args, result: dict) -> None:
  import tensorflow as tf
  from tf_simclr.training import stages

  source = _make_source(args)
  cfg = _experiment_config(args, args.pipeline_stage, source.num_classes)
  stage = stages.get(args.pipeline_stage)
  # One input pipeline feeding one replica: the whole batch.
  dataset = stage.dataset_fns(
      cfg, stage.training_source(cfg, source), start_step=0)(
          tf.distribute.InputContext())
  iterator = iter(dataset)
  start = time.perf_counter()
  for _ in range(args.warmup_steps):
    batch = next(iterator)
  result["warmup_seconds"] = round(time.perf_counter() - start, 2)
  reset = _reset_peak_rss()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    batch = next(iterator)
    times.append(time.perf_counter() - start)
  total = sum(times)
  result.update(
      seconds_per_step=total / args.steps,
      median_seconds_per_step=statistics.median(times),
      min_seconds_per_step=min(times),
      images_per_sec=args.batch_size * args.steps / total,
      views_per_batch=2 if args.pipeline_stage == "pretrain" else 1,
      batch_keys=sorted(batch),
      steady_peak_rss_gb=_kb_to_gb(_proc_status_kb("VmHWM")) if reset
      else None)


def _configure_tensorflow(args) -> dict:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if args.onednn != "default":
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"
  import tensorflow as tf
  if args.intra_op_threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
  if args.inter_op_threads:
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
  return {
      "tensorflow": tf.__version__,
      "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
      "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
      "onednn_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
  }


_CONFIG_KEYS = ("stage", "resnet_depth", "width_multiplier", "sk_ratio",
                "se_ratio", "image_size", "pretrain_image_size", "batch_size",
                "use_blur", "color_jitter_strength", "min_crop_area",
                "jit_compile", "memory_size", "fused_bn", "recompute_block_groups", "precision",
                "steps_per_loop", "dataset", "input", "distribution", "steps",
                "warmup_steps", "label")


def run_once(args) -> dict:
  """One benchmark in this process; returns the result record."""
  result: dict[str, Any] = {_JSON_KEY: "bench_train", "config": {
      k: getattr(args, k) for k in _CONFIG_KEYS}}
  if args.stage == "pipeline":
    result["config"]["pipeline_stage"] = args.pipeline_stage
  result["load_avg_start"] = _load_average()
  result["cpus"] = os.cpu_count()
  result["machine"] = platform.machine()
  wall = time.perf_counter()
  result.update(_configure_tensorflow(args))
  if args.stage == "pipeline":
    _run_pipeline(args, result)
  else:
    _run_training(args, result)
  result["peak_rss_gb"] = _peak_rss_gb()
  result["peak_rss_note"] = "ru_maxrss: process peak incl. build/compile"
  result["load_avg_end"] = _load_average()
  result["wall_seconds"] = round(time.perf_counter() - wall, 1)
  return result


def _describe(result: dict) -> str:
  c = result["config"]
  if c["stage"] == "pipeline":
    what = (f"pipeline[{c['pipeline_stage']}] {c['dataset']} "
            f"{c['image_size']}px b{c['batch_size']}")
  else:
    what = (f"{c['stage']} R{c['resnet_depth']} {c['width_multiplier']:g}x "
            f"sk{c['sk_ratio']:g} {c['image_size']}px b{c['batch_size']} "
            f"jit={'on' if c['jit_compile'] else 'off'} "
            f"mem={c['memory_size']} blur={'on' if c['use_blur'] else 'off'} "
            f"fused_bn={'on' if c['fused_bn'] else 'off'} "
            f"recompute={c.get('recompute_block_groups', 0)} "
            f"{c.get('precision', 'float32')} "
            f"{c['dataset']}/{c['input']}")
  steady = result.get("steady_peak_rss_gb")
  line = (f"{what}: {result['images_per_sec']:.2f} images/s, "
          f"{result['seconds_per_step']:.2f} s/step "
          f"(median {result['median_seconds_per_step']:.2f}), "
          f"peak RSS {result['peak_rss_gb']:.2f} GB (process peak"
          + (f"; timed steps {steady:.2f} GB" if steady else "") + "), "
          f"load avg {result['load_avg_start']} -> {result['load_avg_end']}")
  if "gflops_per_sec" in result:
    line += f", ~{result['gflops_per_sec']:.1f} GFLOP/s"
  return line


# ----------------------------------------------------------------------------
# Back-to-back comparison


def _strip_compare_args(argv: Sequence[str]) -> list[str]:
  kept, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    if arg in ("--compare", "--compare_repeats"):
      skip = True
      continue
    if arg.startswith(("--compare=", "--compare_repeats=")):
      continue
    kept.append(arg)
  return kept


def _parse_compare(spec: str, parser: argparse.ArgumentParser):
  name, sep, values = spec.partition("=")
  options = {a.dest for a in parser._actions}  # pylint: disable=protected-access
  if not sep or name not in options or name.startswith("compare"):
    raise ValueError(f"--compare must be NAME=A,B with NAME a flag of this "
                     f"script, got {spec!r}")
  parts = values.split(",")
  if len(parts) != 2 or not all(parts):
    raise ValueError(f"--compare needs exactly two values A,B, got {spec!r}")
  return name, parts[0], parts[1]


def _run_child(base_args: list[str], extra: str) -> dict:
  command = [sys.executable, os.path.abspath(__file__), *base_args, extra]
  print(f"$ {' '.join(command[1:])}", flush=True)
  proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, check=False)
  record = None
  for line in proc.stdout.splitlines():
    if line.startswith("{") and f'"{_JSON_KEY}"' in line:
      record = json.loads(line)
    else:
      print(f"  {line}")
  if proc.returncode or record is None:
    sys.stderr.write(proc.stderr[-4000:])
    raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): "
                       f"{' '.join(command)}")
  print(json.dumps(record), flush=True)
  return record


def run_compare(args, argv: Sequence[str],
                parser: argparse.ArgumentParser) -> dict:
  """A/B runs in fresh subprocesses, interleaved; returns the summary."""
  name, value_a, value_b = _parse_compare(args.compare, parser)
  base = [a for a in _strip_compare_args(argv)
          if not (a == f"--{name}" or a.startswith(f"--{name}="))]
  runs = {value_a: [], value_b: []}
  for _ in range(args.compare_repeats):
    for value in (value_a, value_b):
      runs[value].append(_run_child(base, f"--{name}={value}"))

  def mean(value, key):
    values = [r[key] for r in runs[value] if r.get(key) is not None]
    return sum(values) / len(values) if values else None

  summary = {_JSON_KEY: "compare", "flag": name, "baseline": value_a,
             "candidate": value_b, "repeats": args.compare_repeats}
  for key in ("images_per_sec", "seconds_per_step", "peak_rss_gb",
              "steady_peak_rss_gb"):
    a, b = mean(value_a, key), mean(value_b, key)
    summary[f"{key}_baseline"] = a
    summary[f"{key}_candidate"] = b
    if a and b is not None:
      summary[f"{key}_ratio"] = b / a
  summary["peak_rss_delta_gb"] = (
      summary["peak_rss_gb_candidate"] - summary["peak_rss_gb_baseline"])
  if summary.get("steady_peak_rss_gb_candidate") is not None:
    summary["steady_peak_rss_delta_gb"] = (
        summary["steady_peak_rss_gb_candidate"] -
        summary["steady_peak_rss_gb_baseline"])
  summary["load_avg"] = [r["load_avg_start"] for v in runs.values()
                         for r in v]
  print(f"compare --{name}: {value_b} / {value_a} = "
        f"{summary.get('images_per_sec_ratio', float('nan')):.3f}x images/s "
        f"({summary['images_per_sec_baseline']:.2f} -> "
        f"{summary['images_per_sec_candidate']:.2f}); peak RSS "
        f"{summary['peak_rss_gb_baseline']:.2f} -> "
        f"{summary['peak_rss_gb_candidate']:.2f} GB "
        f"(delta {summary['peak_rss_delta_gb'] * 1024:+.0f} MB)")
  print(json.dumps(summary), flush=True)
  return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.steps % args.steps_per_loop:
    parser.error(f"--steps={args.steps} is not a multiple of "
                 f"--steps_per_loop={args.steps_per_loop}")
  try:
    if args.compare:
      run_compare(args, argv, parser)
      return 0
    result = run_once(args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(_describe(result), flush=True)
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
