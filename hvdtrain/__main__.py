"""``python -m hvdtrain``: the same as the ``hvdtrain`` command."""
import sys

from hvdtrain.cli import main

sys.exit(main())
