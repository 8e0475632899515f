"""bench/side_by_side.py's pure logic: per-precision flags, the commands both
sides run, the summary and the table (no TensorFlow is run)."""

import argparse
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import side_by_side as sbs  # noqa: E402


def _args(**overrides):
  values = dict(python="python", original_dir="/orig/tf2", data_dir="/data",
                steps_per_window=2, windows=2)
  values.update(overrides)
  return argparse.Namespace(**values)


def test_resnet50_recomputes_in_float32_only():
  for name in ("r50_pretrain", "r50sk_pretrain", "r50_pretrain_224"):
    cfg = sbs.CONFIGURATIONS[name]
    assert cfg.flags_for("float32") == ("--recompute_block_groups=2",)
    assert cfg.flags_for("mixed_bfloat16") == ()
  r18 = sbs.CONFIGURATIONS["r18_pretrain"]
  assert r18.flags_for("float32") == r18.flags_for("mixed_bfloat16") == ()


def test_both_sides_run_the_same_configuration_and_steps():
  cfg = sbs.CONFIGURATIONS["r50sk_pretrain"]
  original = sbs._original_command(_args(), cfg, "/m", "/r.json")  # pylint: disable=protected-access
  for flag in ("--train_mode=pretrain", "--resnet_depth=50", "--sk_ratio=0.0625",
               "--image_size=32", "--train_batch_size=128",
               "--checkpoint_steps=2", "--train_steps=6", "--use_blur=False",
               "--color_jitter_strength=0.5"):
    assert flag in original, flag
  ours = sbs._ours_command(_args(), cfg, "mixed_bfloat16")  # pylint: disable=protected-access
  for flag in ("--stage=pretrain", "--resnet_depth=50", "--sk_ratio=0.0625",
               "--image_size=32", "--batch_size=128", "--warmup_steps=2",
               "--steps=4", "--steps_per_loop=2", "--use_blur=off",
               "--precision=mixed_bfloat16"):
    assert flag in ours, flag
  assert "--recompute_block_groups=2" not in ours
  assert "--recompute_block_groups=2" in sbs._ours_command(  # pylint: disable=protected-access
      _args(), cfg, "float32")


def test_summary_divides_within_one_configuration():
  records = [
      {"config": "r18_pretrain", "side": "original", "precision": "float32",
       "images_per_sec": 20.0, "peak_rss_gb": 5.0},
      {"config": "r18_pretrain", "side": "original", "precision": "float32",
       "images_per_sec": 30.0, "peak_rss_gb": 4.0},
      {"config": "r18_pretrain", "side": "tf_simclr", "precision": "float32",
       "flags": [], "images_per_sec": 30.0, "peak_rss_gb": 2.5},
      {"config": "r18_pretrain", "side": "tf_simclr",
       "precision": "mixed_bfloat16", "flags": [], "images_per_sec": 50.0,
       "peak_rss_gb": 2.0},
  ]
  rows = sbs.summarize(records, ["r18_pretrain", "r18_finetune"],
                       ["float32", "mixed_bfloat16"])
  assert [r["precision"] for r in rows] == ["float32", "mixed_bfloat16"]
  assert rows[0]["speed_ratio"] == pytest.approx(30.0 / 25.0)
  assert rows[0]["rss_ratio"] == pytest.approx(2.5 / 5.0)
  assert rows[1]["speed_ratio"] == pytest.approx(2.0)
  table = sbs.format_table(rows)
  assert "**1.20×** | 0.50× |" in table
  assert "| `--precision=mixed_bfloat16` |" in table
