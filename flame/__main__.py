"""`python -m flame ...` is `python -m flame.train ...`."""
import sys

from flame.train import main

sys.exit(main())
