import sys

from vs_uav.app.cli import main

sys.exit(main())
