import sys

from mri_ssl.cli import main

sys.exit(main())
