"""`python -m agent`: the terminal chat."""

import sys

from agent.cli import main

sys.exit(main())
