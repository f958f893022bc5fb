"""Profile the gateway under load: see bench/tollbench/profile.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tollbench.profile import main

if __name__ == "__main__":
    main()
