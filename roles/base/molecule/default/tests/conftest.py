"""Make the repository (gpuprov, molecule/shared) importable from the verifier."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[5]
for p in (ROOT, ROOT / "molecule" / "shared"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
