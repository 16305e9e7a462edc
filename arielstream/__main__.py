"""``python -m arielstream``: the command-line interface (:mod:`arielstream.cli.app`)."""

import sys

from .cli.app import main

sys.exit(main())
