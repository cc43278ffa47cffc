"""Programs run from the repository root as modules: ``python -m scripts.run_local``, ``-m scripts.load``, ...

They import the installed ``actors`` and ``chipmock`` packages; ``just`` runs them.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root, where these programs run
