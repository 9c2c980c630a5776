"""``python -m larp`` runs the ``larp`` command."""

import sys

from larp.cli.main import main

sys.exit(main())
