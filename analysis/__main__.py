"""``python -m analysis`` is the ``medseg`` console command (:mod:`analysis.console`)."""

from analysis.console import main

raise SystemExit(main())
