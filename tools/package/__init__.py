"""Build the two deployable artifacts and check them from the unpacked zip alone.

- ``dist/azure-functionapp.zip``: the Functions app root (function_app.py, host.json,
  requirements.txt, functions/, shared/) with dependencies in
  ``.python_packages/lib/site-packages`` for zip deploy.
- ``dist/lambda.zip``: functions/, shared/ and dependencies at the zip root, the one code
  package of every function in template.yaml.

Both are byte-for-byte reproducible (sorted entries, fixed timestamps and permissions) and
their dependencies are pip-installed for linux x86_64 / CPython 3.11 whatever machine builds
them, cached under ``.local/`` by a hash of the requirements.
"""

from tools.package.artifacts import AZURE, LAMBDA, ArtifactSpec, build_artifact
from tools.package.verify import VerifyReport, verify_artifact

__all__ = ["AZURE", "LAMBDA", "ArtifactSpec", "VerifyReport", "build_artifact", "verify_artifact"]
