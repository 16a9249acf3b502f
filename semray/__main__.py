import sys

from semray.cli import main

sys.exit(main())
