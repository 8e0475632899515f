"""The README's commands and CI stay in step; the library stays layered."""

import pathlib
import re

from conftest import REPO_ROOT


def _readme_commands():
  text = (REPO_ROOT / "README.md").read_text()
  return re.findall(r"```bash\n(python3 -m venv[^\n]*)\n```", text)


def test_ci_runs_the_readme_test_command_verbatim():
  commands = _readme_commands()
  test_commands = [c for c in commands if "pytest" in c]
  assert len(test_commands) == 1
  assert test_commands[0] in (REPO_ROOT / ".ci" / "run").read_text()


def test_readme_main_command_is_the_main_job():
  main = [c for c in _readme_commands() if "run.py" in c]
  assert len(main) == 1
  assert main[0].endswith(
      "run.py --mode=train_then_eval --train_mode=pretrain")


def _python_sources(folder: str):
  return sorted((REPO_ROOT / folder).rglob("*.py"))


def test_library_never_reads_flags_or_uses_keras3():
  for path in _python_sources("tf_simclr"):
    text = path.read_text()
    assert not re.search(r"\bFLAGS\b", text), path
    assert not re.search(r"^\s*(import flags|from flags)", text, re.M), path
    assert not re.search(r"tf\.keras\.|^\s*import keras\b|^\s*from keras\b",
                         text, re.M), path


def test_data_and_models_never_import_each_other():
  for path in _python_sources("tf_simclr/data"):
    assert "tf_simclr.models" not in path.read_text(), path
    assert "tf_simclr.training" not in path.read_text(), path
  for path in _python_sources("tf_simclr/models"):
    assert "tf_simclr.data" not in path.read_text(), path
    assert "tf_simclr.training" not in path.read_text(), path
