import sys

from djz.cli import main

sys.exit(main())
