import sys

from r2ec.cli import main

sys.exit(main())
