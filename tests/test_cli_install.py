"""`pip install .` gives a working `tf-simclr` command and Python API.

The wheel is built from a copy of the sources and installed with --target;
everything then runs from a directory outside the checkout with only the
install (and the test venv's dependencies) importable.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO_ROOT

# Small enough for a few seconds of CPU: R18 at width 1/16, 16 px digits.
TINY = {"train_steps": 3, "train_batch_size": 16, "width_multiplier": 0.0625,
        "proj_out_dim": 16, "distribution": "one_device",
        "eval_steps": 2, "eval_batch_size": 32,
        "export_at_end": False, "knn_eval": False,
        "probe_label_fractions": ()}

_API_SCRIPT = """
import sys
import tf_simclr
print("imported", tf_simclr.__file__)
cfg = tf_simclr.presets.get("digits_cpu").config(model_dir=sys.argv[1], **{tiny})
print("result", tf_simclr.run(cfg))
"""


def _flag(name, value):
  if isinstance(value, bool):
    return f"--{name}" if value else f"--no{name}"
  if isinstance(value, tuple):
    return f"--{name}={','.join(str(v) for v in value)}"
  return f"--{name}={value}"


def test_packages_list_every_folder_of_the_library():
  project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
  setuptools = project["tool"]["setuptools"]
  folders = {".".join(p.parent.relative_to(REPO_ROOT).parts)
             for p in (REPO_ROOT / "tf_simclr").rglob("__init__.py")}
  assert set(setuptools["packages"]) == folders | {"tf_simclr.cli"}
  assert setuptools["package-dir"] == {"tf_simclr.cli": "flags"}
  assert project["project"]["scripts"] == {
      "tf-simclr": "tf_simclr.cli.main:run"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(site dir, environment) of a wheel built from the checkout."""
  tmp = tmp_path_factory.mktemp("install")
  src = tmp / "src"
  # A copy keeps the build's build/ and egg-info out of the checkout.
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
  for name in ("tf_simclr", "flags"):
    shutil.copytree(REPO_ROOT / name, src / name, ignore=ignore)
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(REPO_ROOT / name, src / name)
  pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
  # Build isolation brings the setuptools pyproject.toml asks for (the one
  # beside pip may be older), as `pip install .` does.
  subprocess.run([*pip, "wheel", "--no-deps", str(src), "-w", str(tmp / "dist")],
                 check=True, cwd=tmp)
  wheel, = (tmp / "dist").glob("tf_simclr-*.whl")
  site = tmp / "site"
  subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target",
                  str(site), str(wheel)], check=True, cwd=tmp)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  work = tmp / "work"
  work.mkdir()
  return site, env, work


def _run(args, env, cwd):
  return subprocess.run(args, env=env, cwd=cwd, capture_output=True,
                        text=True, timeout=300)


def test_console_script_trains_and_shows_a_presets_flags(installed):
  site, env, work = installed
  tf_simclr_cmd = str(site / "bin" / "tf-simclr")
  model_dir = work / "cli_run"
  result = _run([tf_simclr_cmd, "--mode=train_then_eval",
                 "--train_mode=pretrain", f"--model_dir={model_dir}",
                 *(_flag(k, v) for k, v in TINY.items())], env, work)
  assert result.returncode == 0, result.stderr
  assert any(l.startswith("final: ") for l in result.stdout.splitlines()), (
      result.stdout)
  saved = json.loads((model_dir / "config.json").read_text())
  assert saved["preset"] == "digits_cpu"
  assert saved["overrides"] == {"mode": "train_then_eval",
                                "model_dir": str(model_dir),
                                **{k: list(v) if isinstance(v, tuple) else v
                                   for k, v in TINY.items()}}
  assert saved["train"]["train_steps"] == 3

  result = _run([tf_simclr_cmd, "--preset=cifar10_simclr", "--helpfull"],
                env, work)
  assert result.returncode == 0, result.stderr
  # The preset's values are the defaults shown.
  assert "NT-Xent temperature.\n    (default: '0.5')" in result.stdout
  assert "(default: 'cifar10')" in result.stdout


def test_python_api_runs_a_preset_from_the_install(installed):
  site, env, work = installed
  script = work / "api.py"
  script.write_text(_API_SCRIPT.format(tiny=repr(TINY)))
  result = _run([sys.executable, str(script), str(work / "api_run")], env,
                work)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  imported = [l for l in lines if l.startswith("imported ")]
  assert imported == [f"imported {site / 'tf_simclr' / '__init__.py'}"]
  results = [l for l in lines if l.startswith("result {")]
  assert len(results) == 1, result.stdout
  assert "'global_step': 3" in results[0]
  assert "'label_top_1_accuracy': " in results[0]
