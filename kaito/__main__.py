"""`python -m kaito` is the `kaito` command."""

from kaito.cli import main

raise SystemExit(main())
