"""bench/time_to_accuracy.py's pure logic: calibration fit, budget -> steps,
warm-up epochs, result parsing, recipe choice (no TensorFlow is run)."""

import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import time_to_accuracy as tta  # noqa: E402


def test_fit_step_time_leaves_out_the_first_two_windows():
  # 30 s of start-up and tracing before step 2, a slow second window (6 s per
  # step), then 4 s per step.
  times = {2: 30.0, 4: 42.0, 6: 50.0, 8: 58.0, 10: 66.0}
  step_seconds, overhead = tta.fit_step_time(times)
  assert step_seconds == pytest.approx(4.0)
  assert overhead == pytest.approx(66.0 - 10 * 4.0)
  assert tta.fit_step_time(times, warmup_windows=1)[0] == pytest.approx(4.5)
  with pytest.raises(ValueError, match="calibration_seconds"):
    tta.fit_step_time({2: 30.0, 4: 42.0})


def test_plan_steps_fits_the_budget_in_whole_checkpoint_periods():
  steps, period = tta.plan_steps(1200, 4.0, 22.0, safety=0.95, checkpoints=20)
  assert steps % period == 0
  assert 22.0 + steps * 4.0 <= 1200 * 0.95 + 22.0
  # Rounding down to whole periods loses less than one period.
  assert steps > int((1200 - 22.0) * 0.95 // 4.0) - period
  assert tta.plan_steps(60, 10.0, 5.0, safety=1.0, checkpoints=20) == (5, 1)
  with pytest.raises(ValueError, match="budget_seconds=60"):
    tta.plan_steps(60, 10.0, 55.0)
  # Never saves more often than the calibration did.
  assert tta.plan_steps(60, 10.0, 5.0, safety=1.0, min_period=2) == (4, 2)
  with pytest.raises(ValueError, match="checkpoint period"):
    tta.plan_steps(60, 10.0, 45.0, safety=1.0, min_period=2)


@pytest.mark.parametrize("steps,examples,batch",
                         [(0, 50000, 512), (5, 50000, 512), (97, 50000, 256),
                          (1, 160, 8), (123, 49999, 500)])
def test_warmup_epochs_floor_back_to_the_steps(steps, examples, batch):
  # Both codes floor warmup_epochs * examples / batch (the original as
  # round(a * n // b)).
  epochs = tta.warmup_epochs_for(steps, examples, batch)
  assert math.floor(epochs * examples / batch) == steps
  assert int(round(epochs * examples // batch)) == steps


def test_linear_eval_top1_reads_both_codes_results():
  assert tta.linear_eval_top1({"eval/label_top_1_accuracy": 0.25,
                               "global_step": 4.0}) == 0.25
  assert tta.linear_eval_top1({"label_top_1_accuracy": 0.5,
                               "teacher_label_top_1_accuracy": 0.9}) == 0.5
  with pytest.raises(ValueError, match="label_top_1_accuracy"):
    tta.linear_eval_top1({"knn_top_1_accuracy": 0.3})


def test_fast_flags_use_bfloat16_only_where_native():
  flags, why = tta.default_fast_flags("CPU avx512_bf16")
  assert "--precision=mixed_bfloat16" in flags and "avx512_bf16" in why
  flags, why = tta.default_fast_flags(None)
  assert not any(f.startswith("--precision") for f in flags)
  assert "float32" in why


def test_smoke_overrides_come_last_and_skip_the_originals_width():
  args = tta.build_parser().parse_args(
      ["--data_dir=/d", "--batch_size=8", "--width_multiplier=0.0625"])
  fast = tta.Recipe("fast", args, ["--train_batch_size=256",
                                   "--width_multiplier=0.25"])
  assert fast.batch_size == 8
  assert tta.flag_value(fast.flags(), "width_multiplier") == "0.0625"
  original = tta.Recipe("original", args)
  assert original.batch_size == 8
  assert tta.flag_value(original.flags(), "width_multiplier") == "1"
  assert tta.parse_which("fast,original") == ["fast", "original"]
  with pytest.raises(ValueError, match="--which"):
    tta.parse_which("ours,mine")
