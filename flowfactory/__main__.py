import sys

from flowfactory.cli import main

sys.exit(main())
