"""``python -m regpose`` (and ``torchrun -m regpose train ...``)."""
import sys

from .cli import main

sys.exit(main())
