"""`python -m service.cli`: the same as the `rewardloop` console script."""
import sys

from service.cli.main import main

sys.exit(main())
