r"""`python -m pmm_geo` runs the `pmm-geo` command line."""
import sys

from pmm_geo.cli import main

if __name__ == '__main__':
    sys.exit(main())
