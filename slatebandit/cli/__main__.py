"""``python -m slatebandit.cli``: the same as the ``slatebandit`` command."""

import sys

from slatebandit.cli import main

sys.exit(main())
