"""`hydra/launcher=ray` and `hydra/launcher=slurm` (conf/hydra/launcher/). Hydra accepts launcher classes only
from the hydra_plugins package and imports every module in it at each start, so these classes stay thin and
import nothing heavy: the work is done by src/scaleout/, on top of the plugins hydra-ray-launcher and
hydra-submitit-launcher (which run each job; the classes here add what tunegrid needs around them: per-cell
resources, a record for a cell whose process died, submit-and-return, checkpoint-and-requeue)."""

from __future__ import annotations

from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher
from hydra.plugins.search_path_plugin import SearchPathPlugin


class RayLauncher(Launcher):
    """The cells of a grid as Ray tasks: several at once, each in a new process with its own GPU(s)."""

    def __init__(
        self,
        gpus_per_run: float = 1,
        cpus_per_run: float = 1,
        init: Any = None,
        remote: Any = None,
        **unknown: Any,
    ) -> None:
        from src.scaleout import settings

        try:
            settings.check_ray(gpus_per_run, cpus_per_run, unknown)
        except settings.ConfigError as e:
            settings.refuse(e)
        self.gpus_per_run, self.cpus_per_run = gpus_per_run, cpus_per_run
        self.init, self.remote = init, remote
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx):
        from src.scaleout import ray_jobs

        return ray_jobs.launch(self, job_overrides, initial_job_idx)


class SlurmLauncher(Launcher):
    """The cells of a grid as one SLURM job array (submitit). `wait: false` returns once it is submitted."""

    def __init__(self, wait: bool = True, **params: Any) -> None:
        from src.scaleout import settings, slurm_jobs

        try:
            settings.check_slurm(wait, params, slurm_jobs.plugin_keys())
            self.plugin = slurm_jobs.plugin(params)  # hydra-submitit-launcher's launcher, which runs each job
        except settings.ConfigError as e:
            settings.refuse(e)
        self.wait = wait

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.plugin.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides, initial_job_idx):
        from src.scaleout import slurm_jobs

        return slurm_jobs.launch(self, job_overrides, initial_job_idx)

    def __call__(self, *args: Any) -> Any:
        """One job, on a compute node (submitit pickles this launcher and calls it there)."""
        from src.scaleout import slurm_jobs

        return slurm_jobs.run_job(self, *args)

    def checkpoint(self, *args: Any) -> Any:
        """submitit asks this after the preemption / time-limit signal: requeue the same job (it resumes from
        the run's checkpoint: `resume: auto`)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)


class PreferTunegridRay(SearchPathPlugin):
    """hydra-ray-launcher registers its own `hydra/launcher/ray` in the ConfigStore, and a config file of the
    same name (conf/hydra/launcher/ray.yaml) would be merged into that schema (a deprecated Hydra 1.0
    behaviour, with a warning, that rejects tunegrid's keys). Hydra runs search-path plugins after importing
    every plugin and before composing, so this one drops the plugin's entry: `hydra/launcher=ray` is ours."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        ConfigStore.instance().repo.get("hydra", {}).get("launcher", {}).pop("ray.yaml", None)
