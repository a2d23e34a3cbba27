"""``python -m args_fast ...`` is ``args-fast ...`` (and what ``torchrun ... -m args_fast ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
