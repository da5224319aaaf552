import sys

from rewardrt.cli import main

sys.exit(main())
