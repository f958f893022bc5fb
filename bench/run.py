"""`make bench`: see bench/README.md. Run with the project's Python (.venv)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tollbench.run import main

if __name__ == "__main__":
    main()
