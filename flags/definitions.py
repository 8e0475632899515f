"""absl flag definitions for run.py.

Defaults are sized so that `python run.py` finishes in minutes on a 2-core CPU
with the embedded `digits` dataset. The original SimCLR settings for ImageNet
and CIFAR-10 are listed in README.md ("Reproducing the paper").
"""

from absl import flags

MODES = ("train", "eval", "train_then_eval", "export")
TRAIN_MODES = ("pretrain", "finetune", "supervised", "distill")


def define_flags() -> None:
  """Defines every tf_simclr flag once (safe to call repeatedly)."""
  if "train_mode" in flags.FLAGS:
    return

  # What to run.
  flags.DEFINE_enum("mode", "train_then_eval", MODES, "What to do.")
  flags.DEFINE_enum("train_mode", "pretrain", TRAIN_MODES, "Training stage.")
  flags.DEFINE_string("model_dir", "/tmp/tf_simclr",
                      "Checkpoints, summaries, config.json and result.json.")
  flags.DEFINE_string(
      "checkpoint", None,
      "Warm start (model weights only) from a tf_simclr checkpoint (prefix or "
      "directory) or from a SavedModel written by the original SimCLR TF2 "
      "code. Ignored when model_dir already holds a checkpoint (resume wins).")

  # Data.
  flags.DEFINE_string(
      "dataset", "digits",
      "'digits' (embedded, offline), 'image_folder' (with --data_dir) or any "
      "TensorFlow Datasets name (cifar10, imagenet2012, ...).")
  flags.DEFINE_string("data_dir", None, "Image-folder root or TFDS data_dir.")
  flags.DEFINE_string("train_split", "train", "Training split.")
  flags.DEFINE_string("eval_split", "test", "Evaluation split.")
  flags.DEFINE_integer("image_size", 16, "Input resolution (<=32 selects the "
                       "CIFAR stem and CIFAR-style evaluation with --stem=auto).")
  flags.DEFINE_integer(
      "pretrain_image_size", 0,
      "Side of the pretraining views (random crops are resized to it); 0: "
      "--image_size. Fine-tuning and evaluation stay at --image_size: the "
      "encoder is convolutional, and smaller views cost fewer FLOPs per step.")
  flags.DEFINE_float("color_jitter_strength", 0.5, "Colour distortion strength.")
  flags.DEFINE_float(
      "min_crop_area", 0.4,
      "Smallest random-crop area in pretraining, as a fraction of the image. "
      "The original code uses 0.08 (effectively 0.1); the default keeps the "
      "8x8 digits recognisable.")
  flags.DEFINE_float(
      "finetune_min_crop_area", 0.08,
      "Smallest random-crop area when fine-tuning, training supervised or "
      "distilling (the original code's 0.08).")
  flags.DEFINE_bool(
      "horizontal_flip", True,
      "Random left-right flips in every training stage (off for digits, "
      "whose mirror images are not digits).")
  flags.DEFINE_bool("use_blur", False, "Random Gaussian blur in pretraining.")
  flags.DEFINE_bool("cache_dataset", False, "Cache decoded examples in memory.")
  flags.DEFINE_bool("skip_corrupt_images", False,
                    "Skip unreadable image files (counted) instead of failing.")
  flags.DEFINE_bool(
      "tfds_download", False,
      "Download and prepare a TFDS dataset missing from --data_dir (needs "
      "internet access); without it a missing dataset is an error saying "
      "how to prepare it.")

  # Backbone.
  flags.DEFINE_integer("resnet_depth", 18, "18, 34, 50, 101, 152 or 200.")
  flags.DEFINE_float(
      "width_multiplier", 0.25,
      "Channel multiplier; integers reproduce the reference, fractions are "
      "rounded to whole channels.")
  flags.DEFINE_float("sk_ratio", 0.0, "Selective-kernel ratio (0 = off; "
                     "SimCLRv2 uses 0.0625).")
  flags.DEFINE_float("se_ratio", 0.0, "Squeeze-excitation ratio (0 = off).")
  flags.DEFINE_enum("stem", "auto", ("auto", "cifar", "imagenet", "resnet_d"),
                    "auto: CIFAR stem for image_size<=32, else ResNet-D with "
                    "SK, else ImageNet (the original code's coupling).")
  flags.DEFINE_enum("shortcut", "auto", ("auto", "projection", "resnet_d"),
                    "auto: ResNet-D average-pool shortcut iff sk_ratio > 0.")
  flags.DEFINE_bool("global_bn", True, "Synchronise BN statistics across "
                    "replicas.")
  flags.DEFINE_float("batch_norm_decay", 0.9, "BN moving-average momentum.")
  flags.DEFINE_bool("fused_batch_norm", False,
                    "Training-mode backbone batch norms through the fused "
                    "kernel when statistics are not synchronised (same maths;"
                    " faster for R50 and narrow networks on CPU, more memory "
                    "for R18).")
  flags.DEFINE_integer("recompute_block_groups", 0,
                       "Recompute the activations of block groups 1..k in "
                       "the backward pass instead of keeping them (0 = keep "
                       "all): less peak memory for some extra compute, same "
                       "gradients.")

  # Heads.
  flags.DEFINE_enum("proj_head_mode", "nonlinear",
                    ("none", "linear", "nonlinear"), "Projection head type.")
  flags.DEFINE_integer("num_proj_layers", 3, "Projection-head layers.")
  flags.DEFINE_integer("proj_out_dim", 128, "Projection output size.")
  flags.DEFINE_integer(
      "ft_proj_selector", 0,
      "Projection-head layer feeding the supervised head (0 = encoder output, "
      "1 = first projection layer, -1 = last).")
  flags.DEFINE_bool("lineareval_while_pretraining", True,
                    "Train a stop-gradient linear head while pretraining.")
  flags.DEFINE_bool("zero_init_logits_layer", False,
                    "Zero the classifier's kernel and bias before fine-tuning.")
  flags.DEFINE_integer("fine_tune_after_block", -1,
                       "Freeze the stem and block groups up to this one.")

  # Loss.
  flags.DEFINE_float("temperature", 0.2, "NT-Xent temperature.")
  flags.DEFINE_bool("hidden_norm", True,
                    "L2-normalise projections before the contrastive loss.")
  flags.DEFINE_integer(
      "memory_size", 0,
      "Queue of negatives from a momentum encoder (MoCo-style; SimCLRv2 uses "
      "about 65536). 0 disables it.")
  flags.DEFINE_float("memory_momentum", 0.999,
                     "EMA momentum of the key (momentum) encoder.")

  # Optimiser.
  flags.DEFINE_enum("optimizer", "lars", ("lars", "momentum", "adam"),
                    "Optimiser.")
  flags.DEFINE_float("learning_rate", 0.3, "Base learning rate (scaled).")
  flags.DEFINE_enum("learning_rate_scaling", "linear", ("linear", "sqrt"),
                    "linear: lr*B/256; sqrt: lr*sqrt(B).")
  flags.DEFINE_float("warmup_epochs", 2.0, "Linear warm-up length.")
  flags.DEFINE_float("momentum", 0.9, "Momentum.")
  flags.DEFINE_float("weight_decay", 1e-4, "Weight decay.")

  # Lengths and batches.
  flags.DEFINE_integer(
      "train_batch_size", 256,
      "Global training batch. 0: derived from the training set's size (the "
      "default of the finetune, supervised and distill stages; README).")
  flags.DEFINE_float("train_epochs", 20,
                     "Training length in epochs (ignored if train_steps > 0).")
  flags.DEFINE_integer("train_steps", 0, "Training length in steps; wins over "
                       "train_epochs when > 0.")
  flags.DEFINE_integer(
      "min_train_steps", 0,
      "Raise an epoch-derived run to at least this many steps (finetune, "
      "supervised and distill default to 300 unless --train_epochs or "
      "--train_steps is given).")
  flags.DEFINE_integer("eval_batch_size", 256, "Global evaluation batch.")
  flags.DEFINE_integer("eval_steps", 0, "Evaluation steps (0 = whole split).")
  flags.DEFINE_float("checkpoint_epochs", 1.0, "Checkpoint period in epochs.")
  flags.DEFINE_integer("checkpoint_steps", 0, "Checkpoint period in steps; wins "
                       "over checkpoint_epochs when > 0.")
  flags.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints kept.")
  flags.DEFINE_integer("steps_per_loop", 0, "Steps per compiled call "
                       "(0 = min(checkpoint period, 50)).")
  flags.DEFINE_integer("log_every_steps", 0, "Progress line period "
                       "(0 = every loop).")
  flags.DEFINE_integer("seed", 0, "Seed for data order, augmentation and init.")

  # Distribution and compilation.
  flags.DEFINE_enum("distribution", "mirrored",
                    ("mirrored", "multi_worker", "one_device", "tpu"),
                    "tf.distribute strategy (multi_worker reads TF_CONFIG).")
  flags.DEFINE_bool("use_tpu", False, "Shorthand for --distribution=tpu.")
  flags.DEFINE_string("tpu_name", None, "TPU name or address.")
  flags.DEFINE_string("tpu_zone", None,
                      "GCE zone of --tpu_name (default: found from the VM's "
                      "metadata). TPU only.")
  flags.DEFINE_string("gcp_project", None,
                      "GCP project of --tpu_name (default: the VM's). TPU "
                      "only.")
  flags.DEFINE_string("master", None,
                      "grpc://HOST:PORT address of the TPU, instead of "
                      "--tpu_name. TPU only.")
  flags.DEFINE_bool(
      "jit_compile", False,
      "XLA-compile the per-replica forward and backward pass (single "
      "replica) and the eval and feature steps. On TPU every step is "
      "XLA-compiled anyway. Off by default: on CPU, XLA's convolutions are "
      "slower than the default kernels (bench/RESULTS.md: 0.60x images/s for "
      "R18 pretraining).")

  flags.DEFINE_enum(
      "precision", "float32", ("float32", "mixed_bfloat16", "mixed_float16"),
      "Training precision. The mixed policies compute in 16 bits and keep "
      "variables, losses, softmax and batch-norm statistics in float32; "
      "mixed_float16 adds dynamic loss scaling.")

  # Fine-tuning and distillation.
  flags.DEFINE_float(
      "label_fraction", 0.0,
      "Train the finetune/supervised stages (and distillation's labelled "
      "term) on this deterministic, class-balanced fraction of train_split "
      "(e.g. 0.01 or 0.1); 0 uses every label.")
  flags.DEFINE_string("label_subset_file", None,
                      "File of example ids / file names (one per line) to "
                      "use as the labelled set instead of --label_fraction.")
  flags.DEFINE_string(
      "teacher_checkpoint", None,
      "--train_mode=distill: a fine-tuned tf_simclr run (its config.json "
      "gives the teacher's architecture) or an original-code SavedModel.")
  flags.DEFINE_string("unlabelled_split", None,
                      "Distillation's unlabelled split (default: train_split, "
                      "labels ignored).")
  flags.DEFINE_float("distill_temperature", 1.0,
                     "Softmax temperature of distillation (paper: 0.1 for "
                     "self-distillation, 1.0 big-to-small).")
  flags.DEFINE_float("distill_label_weight", 0.0,
                     "alpha: loss = (1-alpha)*distill + alpha*labelled CE.")
  flags.DEFINE_bool("distill_temperature_squared", False,
                    "Multiply the distillation loss by temperature^2.")

  # Export.
  flags.DEFINE_string(
      "export_dir", None,
      "TF Serving export base (numbered versions); default MODEL_DIR/export. "
      "Written at the end of training and by --mode=export.")
  flags.DEFINE_string("hub_export_dir", None,
                      "Also write a fine-tunable TF Hub module (+ .tar.gz and "
                      "model card) here.")
  flags.DEFINE_integer("keep_exports", 1, "Newest serving versions kept "
                       "(<= 0 keeps all).")
  flags.DEFINE_bool("export_at_end", True,
                    "Export for TF Serving when training ends.")

  # Monitoring.
  flags.DEFINE_bool("knn_eval", False,
                    "Report k-NN top-1 on final_avg_pool features at eval.")
  flags.DEFINE_integer("knn_k", 200, "Neighbours for the k-NN monitor.")
  flags.DEFINE_float("knn_temperature", 0.1, "k-NN vote temperature.")
  flags.DEFINE_string(
      "probe_label_fractions", "",
      "Comma-separated label fractions (e.g. 0.01,0.1) for a logistic-"
      "regression probe on frozen features after pretraining, reported "
      "against the same probe on a randomly initialised encoder.")
