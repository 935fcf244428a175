"""`python -m decoder ...` (what torchrun launches): the same as the `decoder` command."""

import sys

from decoder.cli import main

sys.exit(main())
