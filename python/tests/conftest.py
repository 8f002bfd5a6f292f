import os
import sys

# The package from this checkout (python/kvq) unless one is installed first on the path.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
