"""`python -m src` is `python -m src.run`: src/run.py runs as the main module, as Hydra needs to find conf/ from
it (imported as src.run, its config_path would be looked up as a Python package and not found)."""

import runpy

runpy.run_module("src.run", run_name="__main__", alter_sys=True)
