"""`python -m common.data.synthetic`: generate the embedded corpus (common/data/synthetic/driver.py)."""
import sys

from common.data.synthetic.driver import main

sys.exit(main())
