"""Regenerate (``--write``) or check the manifest tables in docs/artifact-format.md and
docs/manifest.schema.json from the schema in src/modelpress/manifest_schema.py::

    python tools/manifest_docs.py [--write]
"""

import sys

from modelpress.manifest_schema import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
