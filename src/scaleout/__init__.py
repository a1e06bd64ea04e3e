"""Grids over every GPU a researcher has, on existing engines: Ray on one machine (ray_jobs), SLURM job arrays
through submitit (slurm_jobs). Both start from the launcher classes Hydra finds in hydra_plugins/tunegrid/;
what they share (each cell's config and folder, the grid's job list, a record for a cell whose process died)
is in cells.py. One run over several processes (torchrun) is src/distributed.py."""
