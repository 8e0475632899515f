"""Tests for tf_simclr.export.serving (TF Serving export, issue 7)."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tensorflow.core.protobuf import saved_model_pb2

import tf_simclr
from tf_simclr.data import augment
from tf_simclr.export import serving

from conftest import EXPORT_IMAGE_SIZE as IMAGE_SIZE
from conftest import EXPORT_OUTPUT_KEYS as OUTPUT_KEYS
from conftest import randomise_batch_norm
from conftest import tiny_export_model

NUM_CLASSES = 5
TOP_K = 3


def tiny_model(train_mode: str = "finetune") -> keras.Model:
  return tiny_export_model(NUM_CLASSES, train_mode)


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def expected_serving_outputs(model: keras.Model, images: tf.Tensor,
                             top_k: int) -> dict:
  outputs = model(images, training=False)
  result = {
      "embedding": outputs["final_avg_pool"].numpy(),
      "projection": outputs["proj_head_output"].numpy(),
  }
  if "logits_sup" in outputs:
    logits = outputs["logits_sup"].numpy()
    probabilities = softmax(logits.astype(np.float64))
    result["logits"] = logits
    result["probabilities"] = probabilities
    result["classes"] = np.argsort(-probabilities, axis=-1)[:, :top_k]
  return result


def encoded_images() -> list:
  """PNG, JPEG, BMP and GIF images; two sizes (one needs resizing)."""
  rng = np.random.RandomState(7)
  small = rng.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
  large = rng.randint(0, 256, (20, 24, 3)).astype(np.uint8)
  return [
      tf.io.encode_png(small[0]).numpy(),
      tf.io.encode_jpeg(small[1], quality=90).numpy(),
      tf.io.encode_png(large).numpy(),
      bmp_bytes(small[2]),
      gif_bytes(small[0]),
  ]


def bmp_bytes(image: np.ndarray) -> bytes:
  """A 24-bit bottom-up BMP written by hand (TF has no BMP encoder)."""
  height, width, _ = image.shape
  row = (width * 3 + 3) // 4 * 4
  pixels = bytearray()
  for y in range(height - 1, -1, -1):
    line = image[y, :, ::-1].tobytes()
    pixels += line + b"\0" * (row - len(line))
  header_size = 14 + 40
  header = (b"BM" + (header_size + len(pixels)).to_bytes(4, "little")
            + b"\0\0\0\0" + header_size.to_bytes(4, "little"))
  info = (np.array([40, width, height], "<i4").tobytes()
          + np.array([1, 24], "<u2").tobytes()
          + np.array([0, len(pixels), 2835, 2835, 0, 0], "<i4").tobytes())
  return header + info + bytes(pixels)


def gif_bytes(image: np.ndarray) -> bytes:
  """An 8-colour GIF of `image` thresholded per channel (no image library)."""
  height, width, _ = image.shape
  palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                      [255, 255, 0], [0, 255, 255], [255, 0, 255],
                      [255, 255, 255]], np.uint8)
  indices = (image[..., 0] // 128) * 4 + (image[..., 1] // 128) * 2 + (
      image[..., 2] // 128)
  indices = indices.astype(np.uint8)
  header = (b"GIF89a" + width.to_bytes(2, "little")
            + height.to_bytes(2, "little") + bytes([0xF2, 0, 0])
            + palette[[0, 4, 2, 6, 1, 5, 3, 7]].tobytes())
  # Palette order so that index = 4*r + 2*g + b picks the matching colour:
  # 0 black, 1 blue, 2 green, 3 cyan, 4 red, 5 magenta, 6 yellow, 7 white.
  descriptor = (b"\x2c" + b"\0\0\0\0" + width.to_bytes(2, "little")
                + height.to_bytes(2, "little") + b"\0")
  data = _lzw_uncompressed(indices.reshape(-1).tolist(), min_code_size=3)
  blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                    for i in range(0, len(data), 255))
  return header + descriptor + b"\x03" + blocks + b"\0" + b"\x3b"


def _lzw_uncompressed(indices: list, min_code_size: int) -> bytes:
  """LZW stream that only emits literal codes (clear code every few codes)."""
  clear = 1 << min_code_size
  end = clear + 1
  codes = []
  # The decoder's table grows by one entry per literal after the first;
  # a clear code every 4 literals keeps it below 16 entries, so every code
  # stays min_code_size + 1 = 4 bits wide.
  for start in range(0, len(indices), 4):
    codes.append(clear)
    codes.extend(indices[start:start + 4])
  codes.append(end)
  bits = 0
  nbits = 0
  out = bytearray()
  for code in codes:
    bits |= code << nbits
    nbits += min_code_size + 1
    while nbits >= 8:
      out.append(bits & 0xFF)
      bits >>= 8
      nbits -= 8
  if nbits:
    out.append(bits & 0xFF)
  return bytes(out)


def preprocess_bytes(image_bytes: list) -> tf.Tensor:
  return tf.stack([
      augment.preprocess_for_eval(
          tf.io.decode_image(b, channels=3, expand_animations=False),
          IMAGE_SIZE) for b in image_bytes
  ])


# ----------------------------------------------------------------------------
# The exported fine-tuned model, shared by the tests below.


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = tiny_model()
  randomise_batch_norm(model, seed=1)
  base = str(tmp_path_factory.mktemp("serving"))
  version_dir = serving.export_serving(
      model, base, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES,
      top_k=TOP_K, metadata={"global_step": 40, "note": ("a", 1)})

  image_bytes = encoded_images()
  rng = np.random.RandomState(3)
  float_images = tf.image.convert_image_dtype(
      rng.randint(0, 256, (2, 20, 20, 3)).astype(np.uint8), tf.float32)
  call_images = rng.uniform(0, 1, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
      np.float32)
  expected = {
      "bytes": expected_serving_outputs(
          model, preprocess_bytes(image_bytes), TOP_K),
      "float": expected_serving_outputs(
          model, tf.stack([augment.preprocess_for_eval(i, IMAGE_SIZE)
                           for i in float_images]), TOP_K),
      "call": {k: v.numpy() for k, v in model(call_images,
                                               training=False).items()},
  }
  # Last: training mode changes the model's BN moving averages.
  expected["variables_before_train"] = [v.numpy() for v in model.variables]
  # The export computes batch statistics per replica (one replica when
  # serving); the in-memory synchronised BN gives the same values up to
  # rounding through a different formula, so compare like with like.
  with serving.per_replica_batch_norm(model):
    expected["call_train"] = {
        k: v.numpy() for k, v in model(call_images, training=True).items()}
  expected["variables_after_train"] = [v.numpy() for v in model.variables]
  return {
      "model": model,
      "base": base,
      "dir": version_dir,
      "image_bytes": image_bytes,
      "float_images": float_images.numpy(),
      "call_images": call_images,
      "expected": expected,
  }


_CHILD = r'''
import json
import sys

import numpy as np
import tensorflow as tf

export_dir, inputs_path, out_path = sys.argv[1:4]
inputs = np.load(inputs_path, allow_pickle=True)
image_bytes = np.array(list(inputs["image_bytes"]), dtype=object)
float_images = inputs["float_images"]
call_images = inputs["call_images"]
results = {}
errors = {}

BAD = {
    "bytes_undecodable": ("serving_default", "image_bytes",
                          np.array([image_bytes[0], b"not an image"], object)),
    "bytes_truncated": ("serving_default", "image_bytes",
                        np.array([image_bytes[1][:60]], object)),
    "bytes_rank0": ("serving_default", "image_bytes",
                    np.array(image_bytes[0], object)),
    "bytes_rank2": ("serving_default", "image_bytes",
                    image_bytes[:2].reshape(1, 2)),
    "bytes_empty": ("serving_default", "image_bytes", np.array([], object)),
    "bytes_wrong_dtype": ("serving_default", "image_bytes",
                          np.array([1.0, 2.0], np.float32)),
    "float_rank3": ("serving_float", "images", float_images[0]),
    "float_channels": ("serving_float", "images", float_images[..., :1]),
    "float_empty": ("serving_float", "images", float_images[:0]),
    "float_range": ("serving_float", "images", float_images * 255.0),
    "float_nan": ("serving_float", "images",
                  np.where(float_images > 0.5, np.nan, float_images)),
    "float_wrong_dtype": ("serving_float", "images",
                          np.array([["a"]], object)),
}


def attempt(key, fn):
  try:
    fn()
  except Exception as e:  # Recorded for the parent to judge.
    errors[key] = [type(e).__name__, isinstance(e, tf.errors.OpError),
                   str(e)]
  else:
    errors[key] = None


# TF2 loader.
loaded = tf.saved_model.load(export_dir)
for key, images in (("bytes", tf.constant(image_bytes)),
                    ("float", tf.constant(float_images))):
  signature = "serving_default" if key == "bytes" else "serving_float"
  arg = "image_bytes" if key == "bytes" else "images"
  for name, value in loaded.signatures[signature](**{arg: images}).items():
    results[f"tf2/{key}/{name}"] = value.numpy()
for name, value in loaded(call_images, trainable=False).items():
  results[f"tf2/call/{name}"] = value.numpy()
for key, (signature, arg, value) in BAD.items():
  if key == "float_wrong_dtype":
    value = float_images.astype(np.float64)
  attempt("tf2/" + key, lambda: loaded.signatures[signature](
      **{arg: tf.constant(value)}))
# Still serving after the bad requests.
results["tf2/after_errors/embedding"] = loaded.signatures["serving_default"](
    image_bytes=tf.constant(image_bytes))["embedding"].numpy()
for name, value in loaded(call_images, trainable=True).items():
  results[f"tf2/call_train/{name}"] = value.numpy()
for i, variable in enumerate(loaded.variables):
  results[f"tf2/variable/{i}"] = variable.numpy()
results["tf2/num_variables"] = np.array(len(loaded.variables))
results["tf2/num_trainable_list"] = np.array(
    len(loaded.trainable_variables_list))

# TF1 loader on tag "serve", as TF Serving's C++ loader does.
with tf.Graph().as_default() as graph:
  with tf.compat.v1.Session(graph=graph) as sess:
    meta = tf.compat.v1.saved_model.loader.load(
        sess, [tf.compat.v1.saved_model.tag_constants.SERVING], export_dir)

    def run(signature, arg, value):
      sig = meta.signature_def[signature]
      fetches = {k: v.name for k, v in sig.outputs.items()}
      return sess.run(fetches, {sig.inputs[arg].name: value})

    for key, value in (("bytes", image_bytes), ("float", float_images)):
      signature = "serving_default" if key == "bytes" else "serving_float"
      arg = "image_bytes" if key == "bytes" else "images"
      for name, out in run(signature, arg, value).items():
        results[f"tf1/{key}/{name}"] = out
    for key, (signature, arg, value) in BAD.items():
      attempt("tf1/" + key, lambda: run(signature, arg, value))
    results["tf1/after_errors/embedding"] = run(
        "serving_default", "image_bytes", image_bytes)["embedding"]

errors["imported_tf_simclr"] = "tf_simclr" in sys.modules
np.savez(out_path, **results)
with open(out_path + ".json", "w") as f:
  json.dump(errors, f)
'''


def _saved_model_cli() -> list:
  script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  if os.path.exists(script):
    return [script]
  return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


@pytest.fixture(scope="module")
def fresh_process_results(exported, tmp_path_factory):
  """Loads the export in a new Python process (and runs saved_model_cli)."""
  work = tmp_path_factory.mktemp("child")
  inputs = str(work / "inputs.npz")
  np.savez(inputs, image_bytes=np.array(exported["image_bytes"], object),
           float_images=exported["float_images"],
           call_images=exported["call_images"])
  out = str(work / "out.npz")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  script = work / "child.py"
  script.write_text(_CHILD)
  # The child runs from an empty directory so it cannot import tf_simclr by
  # accident through the working directory.
  child = subprocess.Popen(
      [sys.executable, str(script), exported["dir"], inputs, out],
      cwd=str(work), env={k: v for k, v in env.items() if k != "PYTHONPATH"},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  cli = subprocess.run(
      _saved_model_cli() + ["show", "--dir", exported["dir"], "--all"],
      env=env, capture_output=True, text=True, timeout=300)
  _, stderr = child.communicate(timeout=600)
  assert child.returncode == 0, stderr.decode()[-3000:]
  with open(out + ".json") as f:
    errors = json.load(f)
  return {"arrays": dict(np.load(out)), "errors": errors, "cli": cli}


# ----------------------------------------------------------------------------
# Fresh-process loading: both loaders, both signatures, the original call.


@pytest.mark.parametrize("loader", ["tf2", "tf1"])
@pytest.mark.parametrize("kind", ["bytes", "float"])
def test_signatures_match_in_memory_model(fresh_process_results, exported,
                                          loader, kind):
  arrays = fresh_process_results["arrays"]
  expected = exported["expected"][kind]
  got = {k.split("/")[-1]: v for k, v in arrays.items()
         if k.startswith(f"{loader}/{kind}/")}
  assert sorted(got) == sorted(expected) == [
      "classes", "embedding", "logits", "probabilities", "projection"]
  for name in ("embedding", "projection", "logits", "probabilities"):
    np.testing.assert_allclose(got[name], expected[name], atol=1e-5,
                               err_msg=name)
  assert got["classes"].dtype == np.int64
  np.testing.assert_array_equal(got["classes"], expected["classes"])
  batch = 5 if kind == "bytes" else 2
  assert got["embedding"].shape == (batch, 64)
  assert got["probabilities"].shape == (batch, NUM_CLASSES)
  assert got["classes"].shape == (batch, TOP_K)


def test_original_call_interface(fresh_process_results, exported):
  arrays = fresh_process_results["arrays"]
  # Training-mode batch norm over 3 images divides by small batch
  # variances, which magnifies float rounding differences between the eager
  # and the saved graph; inference mode is held to 1e-5.
  for mode, tolerance in (("call", 1e-5), ("call_train", 2e-4)):
    expected = exported["expected"][mode]
    got = {k.split("/")[-1]: v for k, v in arrays.items()
           if k.startswith(f"tf2/{mode}/")}
    assert sorted(got) == sorted(OUTPUT_KEYS)
    for name in OUTPUT_KEYS:
      np.testing.assert_allclose(got[name], expected[name], atol=tolerance,
                                 rtol=tolerance, err_msg=f"{mode}/{name}")
  # Inference and training mode really differ (BN statistics were moved).
  assert np.abs(exported["expected"]["call"]["logits_sup"]
                - exported["expected"]["call_train"]["logits_sup"]).max() > 1e-3


def test_trainable_call_updates_loaded_moving_averages(fresh_process_results,
                                                       exported):
  arrays = fresh_process_results["arrays"]
  model = exported["model"]
  assert int(arrays["tf2/num_variables"]) == len(model.variables) == 121
  assert int(arrays["tf2/num_trainable_list"]) == len(
      model.trainable_variables) == 73
  before = exported["expected"]["variables_before_train"]
  after = exported["expected"]["variables_after_train"]
  changed = []
  for i, value in enumerate(after):
    np.testing.assert_allclose(arrays[f"tf2/variable/{i}"], value, atol=1e-6,
                               err_msg=model.variables[i].name)
    if not np.array_equal(arrays[f"tf2/variable/{i}"], before[i]):
      changed.append(model.variables[i].name)
  # Exactly the moving statistics of the 21 backbone and 3 projection-head
  # batch norms changed.
  assert len(changed) == 48
  assert all("moving_mean" in n or "moving_variance" in n for n in changed)


@pytest.mark.parametrize("loader", ["tf2", "tf1"])
def test_bad_requests_give_clear_errors(fresh_process_results, loader):
  errors = fresh_process_results["errors"]
  expected = {
      "bytes_undecodable": r"must hold encoded JPEG, PNG, GIF or BMP",
      "bytes_truncated": r"(?i)jpeg",
      "bytes_rank0": r"image_bytes must be a 1-D batch",
      "bytes_rank2": r"image_bytes must be a 1-D batch",
      "bytes_empty": r"image_bytes must hold at least one encoded image",
      "float_rank3": r"images must be float32 \[batch, height, width, 3\]",
      "float_channels": r"images must have 3 \(RGB\) channels",
      "float_empty": r"images must hold at least one image",
      "float_range": r"images must be float32 pixels in \[0, 1\]",
      "float_nan": r"images must be float32 pixels in \[0, 1\]",
  }
  for key, pattern in expected.items():
    error = errors[f"{loader}/{key}"]
    assert error is not None, f"{loader}/{key} raised nothing"
    name, is_op_error, message = error
    assert name == "InvalidArgumentError" and is_op_error, (key, error)
    assert re.search(pattern, message), (key, message[:500])
  # A wrong dtype is refused by the loader itself (the TF1 client converts
  # in Python), never by a crash.
  for key in ("bytes_wrong_dtype", "float_wrong_dtype"):
    error = errors[f"{loader}/{key}"]
    assert error is not None, key
    if loader == "tf2":
      assert error[0] == "InvalidArgumentError"
      assert re.search(r"expected to be a (string|float) tensor", error[2])
    else:
      assert error[0] in ("InternalError", "ValueError", "TypeError",
                          "InvalidArgumentError"), error
  # And the process kept serving correct answers afterwards.
  arrays = fresh_process_results["arrays"]
  np.testing.assert_allclose(
      arrays[f"{loader}/after_errors/embedding"],
      arrays[f"{loader}/bytes/embedding"], atol=0)


def test_loaded_without_tf_simclr(fresh_process_results):
  assert fresh_process_results["errors"]["imported_tf_simclr"] is False


def test_saved_model_cli_lists_signatures(fresh_process_results):
  cli = fresh_process_results["cli"]
  assert cli.returncode == 0, cli.stderr[-2000:]
  text = cli.stdout
  assert "signature_def['serving_default']" in text
  assert "signature_def['serving_float']" in text
  assert "inputs['image_bytes'] tensor_info:" in text
  assert "inputs['images'] tensor_info:" in text
  for name in ("embedding", "projection", "logits", "probabilities",
               "classes"):
    assert text.count(f"outputs['{name}'] tensor_info:") == 2, name
  assert "MetaGraphDef with tag-set: 'serve'" in text


# ----------------------------------------------------------------------------
# Files, versions, size.


def test_version_directory_and_metadata(exported):
  assert exported["dir"] == os.path.join(exported["base"], "40")
  assert sorted(os.listdir(exported["base"])) == ["40"]
  names = set(os.listdir(exported["dir"]))
  assert {"saved_model.pb", "variables", "assets.extra"} <= names
  metadata = serving.read_metadata(exported["dir"])
  assert metadata["global_step"] == 40
  assert metadata["note"] == ["a", 1]
  assert metadata["version"] == 40
  assert metadata["image_size"] == IMAGE_SIZE
  assert metadata["num_classes"] == NUM_CLASSES
  assert metadata["top_k"] == TOP_K
  assert metadata["feature_dim"] == 64
  assert metadata["outputs"] == ["embedding", "projection", "logits",
                                 "probabilities", "classes"]
  assert metadata["call_outputs"] == sorted(OUTPUT_KEYS)


def _graph_constant_bytes(saved_model_pb: str) -> int:
  proto = saved_model_pb2.SavedModel()
  with open(saved_model_pb, "rb") as f:
    proto.ParseFromString(f.read())
  total = 0
  graph = proto.meta_graphs[0].graph_def
  nodes = list(graph.node)
  for function in graph.library.function:
    nodes.extend(function.node_def)
  for node in nodes:
    if node.op == "Const":
      total += len(node.attr["value"].tensor.tensor_content)
  return total


def test_export_stores_each_weight_once(exported, tmp_path):
  model = exported["model"]
  checkpoint = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  checkpoint_bytes = os.path.getsize(
      checkpoint + ".data-00000-of-00001")
  variables_dir = os.path.join(exported["dir"], "variables")
  export_bytes = sum(os.path.getsize(os.path.join(variables_dir, name))
                     for name in os.listdir(variables_dir))
  weight_bytes = 4 * sum(v.shape.num_elements() for v in model.variables)
  assert export_bytes == pytest.approx(checkpoint_bytes, rel=0.10)
  assert export_bytes < 1.10 * weight_bytes
  # No weight was frozen into the graph as a constant either.
  constants = _graph_constant_bytes(
      os.path.join(exported["dir"], "saved_model.pb"))
  assert constants < 0.01 * weight_bytes


def test_pretrain_model_exports_embeddings_only_and_prunes_versions(
    tmp_path):
  model = tiny_model(train_mode="pretrain")
  assert model.supervised_head is None
  base = tmp_path / "base"
  for old in ("3", "10"):
    (base / old).mkdir(parents=True)
    (base / old / "saved_model.pb").write_bytes(b"old")
  (base / "notes").mkdir()
  with pytest.raises(ValueError, match="num_classes must be None"):
    serving.export_serving(model, str(base), image_size=IMAGE_SIZE,
                           num_classes=10)
  path = serving.export_serving(model, str(base), image_size=IMAGE_SIZE,
                                num_classes=None, keep_exports=2)
  assert path == str(base / "11")  # One more than the newest.
  assert sorted(os.listdir(base)) == ["10", "11", "notes"]
  assert serving.list_versions(str(base)) == [10, 11]

  loaded = tf.saved_model.load(path)
  images = np.random.RandomState(5).uniform(
      0, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  outputs = loaded.signatures["serving_float"](images=tf.constant(images))
  assert sorted(outputs) == ["embedding", "projection"]
  expected = expected_serving_outputs(model, images, TOP_K)
  for name in ("embedding", "projection"):
    np.testing.assert_allclose(outputs[name], expected[name], atol=1e-5)
  call = loaded(images, trainable=False)
  assert "logits_sup" not in call and len(call) == 9
  assert serving.read_metadata(path)["num_classes"] is None


def test_failed_export_leaves_no_partial_version(tmp_path, monkeypatch):
  model = tiny_model(train_mode="pretrain")
  base = tmp_path / "base"

  def broken_save(obj, export_dir, signatures=None, options=None):
    del obj, signatures, options
    os.makedirs(os.path.join(export_dir, "variables"))
    with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
      f.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(tf.saved_model, "save", broken_save)
  with pytest.raises(OSError, match="disk full"):
    serving.export_serving(model, str(base), image_size=IMAGE_SIZE,
                           num_classes=None, version=5)
  assert os.listdir(base) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 0}, "image_size must be a positive int"),
    ({"image_size": True}, "image_size must be a positive int"),
    ({"top_k": 0}, "top_k must be a positive int"),
    ({"num_classes": -1}, "num_classes must be a positive int"),
    ({"num_classes": 7}, r"num_classes must match the model's supervised "
                         r"head \(5\), got 7"),
    ({"version": -1}, "version must be a non-negative int"),
    ({"keep_exports": "1"}, "keep_exports must be an int"),
    ({"metadata": ["a"]}, "metadata must be a dict"),
    ({"metadata": {"x": object()}}, "metadata must be JSON-serialisable"),
    ({"metadata": {"global_step": -3}}, r"metadata\['global_step'\] must be"),
])
def test_argument_validation(exported, tmp_path, kwargs, match):
  arguments = {"image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES}
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=match):
    serving.export_serving(exported["model"], str(tmp_path / "x"),
                           **arguments)
  assert not (tmp_path / "x").exists() or os.listdir(tmp_path / "x") == []


def test_export_base_validation(exported):
  with pytest.raises(ValueError, match="export_base must be a non-empty path"):
    serving.export_serving(exported["model"], "", image_size=IMAGE_SIZE,
                           num_classes=None)


# ----------------------------------------------------------------------------
# Converting an original-code SavedModel.


@pytest.mark.slow
def test_reference_fixture_round_trip(r18_fixture_dir, tmp_path):
  reference = np.load(r18_fixture_dir / "io.npz")
  model = tf_simclr.load(
      str(r18_fixture_dir / "saved_model"))
  path = serving.export_serving(model, str(tmp_path), image_size=32,
                                num_classes=None, top_k=20)
  assert serving.read_metadata(path)["top_k"] == 10  # Capped.
  loaded = tf.saved_model.load(path)
  inputs = reference["inputs"]
  outputs = loaded(inputs, trainable=False)
  assert sorted(outputs) == sorted(OUTPUT_KEYS)
  for name in OUTPUT_KEYS:
    np.testing.assert_allclose(outputs[name], reference[name], rtol=1e-4,
                               atol=2e-5, err_msg=name)
  served = loaded.signatures["serving_float"](images=tf.constant(inputs))
  np.testing.assert_allclose(served["embedding"], reference["final_avg_pool"],
                             rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(served["logits"], reference["logits_sup"],
                             rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(served["probabilities"],
                             softmax(reference["logits_sup"].astype(
                                 np.float64)), atol=1e-5)
  np.testing.assert_array_equal(
      served["classes"], np.argsort(-reference["logits_sup"], axis=-1))


def test_replace_directory_swaps_whole_directories(tmp_path):
  target = tmp_path / "7"
  target.mkdir()
  (target / "old.txt").write_text("old")
  staging = serving.temporary_sibling(str(target))
  assert os.path.dirname(staging) == str(tmp_path)
  assert not os.path.basename(staging).isdigit()  # Ignored by TF Serving.
  os.makedirs(staging)
  with open(os.path.join(staging, "new.txt"), "w") as f:
    f.write("new")
  serving.replace_directory(staging, str(target))
  assert os.listdir(tmp_path) == ["7"]
  assert os.listdir(target) == ["new.txt"]
  # Into a fresh location as well.
  staging = serving.temporary_sibling(str(tmp_path / "8"))
  os.makedirs(staging)
  serving.replace_directory(staging, str(tmp_path / "8"))
  assert sorted(os.listdir(tmp_path)) == ["7", "8"]


def _write(path, text):
  tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text)


def test_replace_directory_on_an_object_store_copies_saved_model_pb_last(
    monkeypatch):
  # ram:// renames no directory (like gs://, which renames object by
  # object): the version is copied, and becomes loadable only at the end.
  base = f"ram://replace_{uuid.uuid4().hex}"
  target = f"{base}/7"
  for name in ("saved_model.pb", "variables/variables.index", "old.txt"):
    _write(f"{target}/{name}", "old")
  staging = serving.temporary_sibling(target)
  for name in ("saved_model.pb", "variables/variables.index",
               "variables/variables.data-00000-of-00001", "zzz.pb"):
    _write(f"{staging}/{name}", "new " + name)
  events = []
  copy, remove = tf.io.gfile.copy, tf.io.gfile.remove
  monkeypatch.setattr(tf.io.gfile, "copy", lambda a, b, overwrite=False: (
      events.append(("copy", b[len(target) + 1:])), copy(a, b, overwrite)))
  monkeypatch.setattr(tf.io.gfile, "remove", lambda path: (
      events.append(("remove", path[len(target) + 1:])), remove(path)))
  serving.replace_directory(staging, target)
  # The old version stops being a SavedModel before it is taken apart.
  assert events[0] == ("remove", "saved_model.pb")
  copied = [name for kind, name in events if kind == "copy"]
  assert copied[-1] == "saved_model.pb" and len(copied) == 4
  assert tf.io.gfile.listdir(base) == ["7"]
  assert sorted(tf.io.gfile.listdir(target)) == ["saved_model.pb",
                                                 "variables", "zzz.pb"]
  with tf.io.gfile.GFile(f"{target}/variables/variables.index") as f:
    assert f.read() == "new variables/variables.index"


@dataclasses.dataclass(frozen=True)
class _Settings:
  path: str
  sizes: tuple = (1, 2)


def test_metadata_accepts_numpy_tensors_and_dataclasses():
  metadata = serving.check_metadata({
      "global_step": np.int64(12),
      "loss": tf.constant(0.5),
      "shape": np.array([1, 2]),
      "config": _Settings(path="/x"),
      "tags": {"b", "a"},
  })
  assert metadata == {
      "global_step": 12, "loss": 0.5, "shape": [1, 2],
      "config": {"path": "/x", "sizes": [1, 2]},
      "tags": ["a", "b"],
  }
  assert serving.check_metadata(None) == {}
