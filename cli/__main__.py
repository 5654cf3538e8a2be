"""Run the command line as ``python -m unibias.cli``."""

import sys

from unibias.cli.entry import main

sys.exit(main())
