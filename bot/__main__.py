"""`python -m bot` runs the capbot command line."""

import sys

from bot.cli import main

sys.exit(main())
