import sys

from pfanet_cli.cli import main

sys.exit(main())
