"""Run the command line as ``python -m unibias.cli``."""

import sys

from unibias.cli.main import main

sys.exit(main())
