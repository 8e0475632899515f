"""bench/bench_train.py on synthetic data and bench/op_profile.py's trace
reading, on a tiny traced tf_simclr run (ResNet-18, 16 px, batch 4)."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import op_profile  # noqa: E402


@pytest.mark.parametrize("op_type,kind", [
    ("_MklNativeConv2D", "conv_forward"),
    ("Conv2D", "conv_forward"),
    ("_MklNativeConv2DBackpropFilter", "conv_backprop_filter"),
    ("Conv2DBackpropInput", "conv_backprop_input"),
    ("_MklNativeFusedBatchNormGradV3", "batch_norm"),
    ("_MklMatMul", "matmul"),
    ("ReluGrad", "other"),
])
def test_op_kind(op_type, kind):
  assert op_profile.op_kind(op_type) == kind


def test_union_seconds_counts_overlaps_once():
  assert op_profile._union_seconds([(0, 2), (1, 3), (5, 6)]) == 4  # pylint: disable=protected-access
  assert op_profile._union_seconds([]) == 0  # pylint: disable=protected-access


def test_traced_synthetic_run_shows_its_convolutions(tmp_path, capsys):
  trace_dir = tmp_path / "trace"
  status = op_profile.main([
      f"--_trace_side=ours", f"--_trace_dir={trace_dir}", "--",
      "--stage=pretrain", "--dataset=synthetic", "--synthetic_examples=32",
      "--resnet_depth=18", "--image_size=16", "--batch_size=4",
      "--warmup_steps=1", "--steps=2", "--steps_per_loop=1"])
  assert status == 0
  record = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")][-1]
  assert record["steps_done"] == 3
  assert record["images_per_sec"] > 0
  profile = op_profile.op_seconds_by_kind(str(trace_dir))
  seconds = profile["seconds_by_kind"]
  # A training step runs all three convolution passes.
  for kind in op_profile.CONV_KINDS:
    assert seconds.get(kind, 0.0) > 0.0, (kind, profile["top_op_types"])
  summary = op_profile._summarize(profile)  # pylint: disable=protected-access
  assert 0.0 < summary["conv_share"] < 1.0
  assert 0.0 < summary["conv_busy_seconds"] <= summary["span_seconds"]
  with pytest.raises(RuntimeError, match="no \\*.xplane.pb"):
    op_profile.op_seconds_by_kind(str(tmp_path / "empty"))
