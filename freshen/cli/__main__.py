import sys

from freshen.cli import main

sys.exit(main())
