"""``python -m aha.cli``: what ``torchrun -m aha.cli`` and ``accelerate launch -m aha.cli`` run."""

from aha.cli import main

raise SystemExit(main())
