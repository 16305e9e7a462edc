"""``python -m arielstream``: the command-line interface (:mod:`arielstream.cli`)."""

import sys

from .cli import main

sys.exit(main())
