"""``python -m spatialmix.cli``: the command line (what torchrun and Slurm jobs start)."""

from spatialmix.cli.main import main

raise SystemExit(main())
