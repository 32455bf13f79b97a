"""``python -m medseg_platform`` is the ``medseg`` console command."""

from medseg_platform.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
