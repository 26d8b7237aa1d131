import sys

from tierplan.cli import main

sys.exit(main())
