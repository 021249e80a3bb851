"""Research and release tools of the R2AttU-Net bundle: the paper's ablations, speed and memory benchmarks, object
post-processing sweeps and the Model Zoo release archive. Users of the released bundle do not need them; they run from
the repository root as ``python -m tools.<name>`` and import the bundle's ``scripts`` package from ``bundle/``."""

import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))
