"""tf_simclr command line: pretrain, fine-tune, distill, evaluate, export.

  python run.py --mode=train_then_eval --train_mode=pretrain

Every flag is described by `python run.py --helpfull`; flags/ defines them.
The installed `tf-simclr` command runs the same entry point
(`flags/main.py`, installed as `tf_simclr.cli.main`).
"""

from flags.main import error_line, main, run  # noqa: F401  (tests use them)

if __name__ == "__main__":
  run()
