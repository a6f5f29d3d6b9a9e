"""`python -m medloc_lightning.data`: the same subcommands as the `medloc-data` console script."""
from medloc_lightning.data.cli import main

raise SystemExit(main())
