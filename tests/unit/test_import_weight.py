"""Client paths stay light: a CLI call against a server never imports the ORM, boto3 or torch."""

from __future__ import annotations

import json
import subprocess
import sys


def test_client_paths_do_not_import_heavy_modules():
    code = (
        "import json, sys; import cli.main, registry.clientside.transfer; "
        "import registry.clientside.export; "
        "print(json.dumps({m: m in sys.modules for m in ('sqlalchemy', 'boto3', 'torch')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert json.loads(out) == {"sqlalchemy": False, "boto3": False, "torch": False}
