import sys

from koserve.cli import main

sys.exit(main())
