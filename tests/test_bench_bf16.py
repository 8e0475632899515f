"""bench/bf16_equal_steps.py's analysis: event files, windows, the noise test.

No training here: the runs are faked as their summaries and results.
"""

import importlib.util
import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from tf_simclr.training import optimizer as optimizer_lib

_spec = importlib.util.spec_from_file_location(
    "bf16_equal_steps", REPO_ROOT / "bench" / "bf16_equal_steps.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_compare_uses_the_seed_difference_or_the_floor():
  # Seed difference 0.3 is the noise; 0.2 is within it.
  r = bench.compare(1.0, 1.2, 1.3, floor=0.1)
  assert r["within"] and r["noise"] == pytest.approx(0.3)
  # Seeds agree by chance (0.01): the floor 0.1 decides, 0.2 is outside.
  r = bench.compare(1.0, 1.2, 1.01, floor=0.1)
  assert r["noise"] == pytest.approx(0.1) and not r["within"]
  assert bench.compare(0.5, 0.45, 0.5, floor=0.05)["within"]  # boundary
  with pytest.raises(ValueError, match="floor"):
    bench.compare(1.0, 1.0, 1.0, floor=-1.0)


def test_window_stats_weights_loops_by_their_steps():
  # Loops end at steps 2, 4 (window 0-4) and 6, 7 (window 4-7, short last).
  points = {2: 1.0, 4: 3.0, 6: 10.0, 7: 13.0}
  first, last = bench.window_stats(points, window=4)
  assert (first["start"], first["end"], first["k"]) == (0, 4, 2)
  assert first["mean"] == pytest.approx(2.0)
  # Two steps at 10, one at 13.
  assert (last["start"], last["end"]) == (4, 7)
  assert last["mean"] == pytest.approx((2 * 10.0 + 13.0) / 3)
  # Successive differences: s^2 = (3 - 1)^2 / 2.
  assert first["scatter"] == pytest.approx(math.sqrt(2.0))
  assert bench.window_stats({5: 1.0}, window=5)[0]["scatter"] is None
  with pytest.raises(ValueError, match="window"):
    bench.window_stats(points, window=0)


def test_floors():
  assert bench.window_floor(0.2, 4) == pytest.approx(math.sqrt(2) * 0.1)
  assert bench.window_floor(None, 4) == 0.0
  assert bench.accuracy_floor(0.5, 200) == pytest.approx(0.05)
  assert bench.pooled_scatter(3.0, None, 4.0) == pytest.approx(
      math.sqrt(12.5))


@pytest.mark.parametrize("steps,examples,batch", [(30, 50000, 256),
                                                   (7, 160, 8), (1, 10, 3)])
def test_warmup_epochs_give_exactly_the_warmup_steps(steps, examples, batch):
  epochs = bench.warmup_epochs(steps, examples, batch)
  assert optimizer_lib.warmup_steps(epochs, examples, batch) == steps


def test_subset_folder_links_the_first_images_of_each_class(tmp_path):
  root = tmp_path / "data"
  for split in ("train", "test"):
    for name in ("cat", "dog"):
      (root / split / name).mkdir(parents=True)
      for i in range(3):
        (root / split / name / f"{i}.jpg").write_bytes(b"\xff\xd8\xff")
      (root / split / name / "notes.txt").write_text("not an image")
  subset = bench.subset_folder(str(root), str(tmp_path / "sub"),
                               {"train": 2, "test": 0})
  assert sorted(p.name for p in (tmp_path / "sub/train/cat").iterdir()) == [
      "0.jpg", "1.jpg"]
  assert bench.count_images(f"{subset}/train") == 4
  assert bench.count_images(f"{subset}/test") == 6  # the whole split
  with pytest.raises(ValueError, match="valid"):
    bench.subset_folder(str(root), str(tmp_path / "x"), {"valid": 1})


def _write_run(directory, losses, accs, batch=8):
  writer = tf.summary.create_file_writer(str(directory))
  with writer.as_default():
    for step, (loss, acc) in enumerate(zip(losses, accs), start=1):
      tf.summary.scalar("train/contrast_loss", loss, step=step)
      tf.summary.scalar("train/contrast_acc", acc, step=step)
      tf.summary.scalar("train/images_per_second", batch / 0.5, step=step)
    # Not a scalar: left out.
    tf.summary.image("augmented_views", np.zeros((1, 2, 2, 3), np.float32),
                     step=1)
  writer.close()


def test_rows_from_event_files(tmp_path):
  fakes = {"float32_s0": ([5.0, 4.0, 3.0, 2.0], 0.40),
           "bf16_s0": ([5.0, 4.1, 3.0, 2.1], 0.405),
           "float32_s1": ([5.5, 4.5, 3.5, 2.5], 0.39)}
  runs = {}
  for name, (losses, top1) in fakes.items():
    _write_run(tmp_path / name, losses, [0.1, 0.2, 0.3, 0.4])
    scalars = bench.read_scalars(str(tmp_path / name))
    runs[name] = {"scalars": scalars, "result": {bench.TOP_1: top1},
                  "eval_examples": 10000}
  assert sorted(runs["bf16_s0"]["scalars"]) == [
      "train/contrast_acc", "train/contrast_loss", "train/images_per_second"]
  assert runs["bf16_s0"]["scalars"]["train/contrast_loss"][2] == (
      pytest.approx(4.1))
  # The first loop (tracing) is left out of the steady time.
  assert bench.steady_step_seconds(
      runs["float32_s0"]["scalars"]["train/images_per_second"], 8) == (
          pytest.approx(0.5))
  rows = bench.comparison_rows(runs, window=2)
  assert [(r["metric"], r["steps"]) for r in rows] == [
      ("contrast loss", "0-2"), ("contrast loss", "2-4 (last)"),
      ("contrast acc", "0-2"), ("contrast acc", "2-4 (last)"),
      ("linear-eval top-1", "end")]
  loss_last = rows[1]
  assert loss_last["bf16_s0"] == pytest.approx(2.55)
  assert loss_last["difference"] == pytest.approx(0.05)
  assert loss_last["seed_difference"] == pytest.approx(0.5)
  assert loss_last["within"]
  top1 = rows[-1]
  assert top1["difference"] == pytest.approx(0.005)
  assert top1["within_target"] and top1["within"]
  assert top1["floor"] == pytest.approx(math.sqrt(2 * 0.4 * 0.6 / 10000))
  table = bench.format_table(rows)
  assert table.count("\n") == 1 + len(rows)
  # A run without the tag is an error naming it.
  del runs["bf16_s0"]["scalars"]["train/contrast_acc"]
  with pytest.raises(ValueError, match="bf16_s0"):
    bench.comparison_rows(runs, window=2)


_FAKE_RUN_PY = """
import json, os, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
os.makedirs(flags["model_dir"], exist_ok=True)
with open(os.path.join(flags["model_dir"], "result.json"), "w") as f:
  json.dump({"label_top_1_accuracy": 0.25, "eval_examples": 40}, f)
with open(os.path.join(os.path.dirname(flags["model_dir"]), "calls"), "a") as f:
  f.write(flags["seed"] + "\\n")
print("training finished at step 4 in 3s")
"""


def test_resume_reads_a_finished_run_and_reruns_a_changed_one(tmp_path):
  fake = tmp_path / "fake_run.py"
  fake.write_text(_FAKE_RUN_PY)
  work = tmp_path / "work"
  work.mkdir()
  args = bench.build_parser().parse_args(
      ["--data_dir", str(tmp_path), "--work_dir", str(work), "--resume",
       "--run_py", str(fake), "--train_steps=4"])

  def run(seed):
    return bench.run_one(args, "float32_s0", "float32", seed, str(tmp_path),
                         num_train=100, num_eval=40, work_dir=str(work))

  first = run(0)
  assert not first["resumed"] and first["wall_seconds"] is not None
  second = run(0)
  assert second["resumed"] and second["wall_seconds"] is None
  assert second["result"] == first["result"]
  assert second["train_seconds"] == 3.0
  assert (work / "calls").read_text() == "0\n"
  # Another command (here the seed) in the same folder runs again.
  third = run(1)
  assert not third["resumed"]
  assert (work / "calls").read_text() == "0\n1\n"
  # A rerun that fails leaves no earlier result behind to be resumed.
  fake.write_text("import sys; sys.exit(3)")
  with pytest.raises(RuntimeError, match="exit 3"):
    run(2)
  fake.write_text(_FAKE_RUN_PY)
  assert not (work / "float32_s0" / "result.json").exists()
  # Without --resume a finished run is always rerun.
  args.resume = False
  run(1)
  assert (work / "calls").read_text() == "0\n1\n1\n"
  (tmp_path / "train").mkdir()
  (tmp_path / "test").mkdir()
  args.work_dir = ""
  args.resume = True
  with pytest.raises(ValueError, match="--resume needs --work_dir"):
    bench._check_args(args)
