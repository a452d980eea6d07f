"""`python -m search` runs the search, like `python -m search.run`."""
import sys

from search.run import main

sys.exit(main())
