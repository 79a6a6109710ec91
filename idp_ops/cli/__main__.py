"""`python -m idp_ops.cli`: the same entry point as the `idp-ops` script."""

import sys

from idp_ops.cli.main import main

sys.exit(main())
