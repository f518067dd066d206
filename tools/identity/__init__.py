"""A local managed-identity endpoint (App Service protocol) issuing verifiable tokens."""
