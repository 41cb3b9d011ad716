"""Launchers: where and how engines run (local processes, mpiexec, SSH, batch systems).

``corral start --engines slurm -n 64`` and ``Cluster(n=64, engines="slurm")`` pick one by
name; its options come from the command line and the per-cluster config file
(:mod:`.config`). Every launcher starts ``python -m corral engine --file corral-engine.json``
somewhere; the engines register by themselves.

The package itself imports nothing, so that `corral engine` (whose argument parser knows the
launcher flags, in :mod:`.config`) does not load every launcher: the registry of names is
:mod:`.registry`.
"""
